/*
 * fuzz_ipc_header.c: the nginx side validates a segment header written by
 * another process; any bytes must be rejected cleanly or accepted only when
 * every slot lies inside the mapping.  When accepted, reading every slot's
 * ring must stay in bounds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/ipc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cm_ipc_seg_t   seg;
    uint8_t       *buf, out[64];
    uint32_t       i;

    if (size > (1u << 20)) {
        return 0;
    }
    /* the header is at least a page; pad short inputs with zeros */
    buf = calloc(1, size < CM_IPC_HEADER_SIZE ? CM_IPC_HEADER_SIZE : size);
    if (buf == NULL) {
        return 0;
    }
    memcpy(buf, data, size);
    if (cm_ipc_validate_header((cm_ipc_header_t *) buf, size, NULL, 0) == 0) {
        cm_ipc_stats_snapshot_t  st;

        memset(&seg, 0, sizeof(seg));
        seg.base = buf;
        seg.size = size;
        seg.hdr = (cm_ipc_header_t *) buf;
        /* the statistics block: any bytes are rejected or read in bounds,
         * and a used count never exceeds the capacity */
        if (cm_ipc_stats_read(&seg, &st) == 0
            && st.kv_used_tokens > st.kv_cap_tokens)
        {
            __builtin_trap();
        }
        for (i = 0; i < seg.hdr->slot_count; i++) {
            (void) cm_ipc_ring_get(&seg, cm_ipc_slot(&seg, i), out,
                                   sizeof(out));
        }
    }
    free(buf);
    return 0;
}
