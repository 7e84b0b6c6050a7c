/*
 * fuzz_lstm_header.c: the LSTM checkpoint header check on arbitrary bytes.
 * The first 8 input bytes are the claimed file size, the rest (zero-padded
 * to 1024 bytes) the header.  Whatever passes must describe a model whose
 * parameter count matches that file size exactly, with a tied output only
 * where E == H.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/lstm.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int32_t           h[CM_LSTM_HEADER_INTS];
    uint64_t          fsize = 0;
    cm_lstm_config_t  cfg;
    size_t            sizes[CM_LSTM_NPARAMS], n;
    char              err[256];

    if (size < 8) {
        return 0;
    }
    memcpy(&fsize, data, 8);
    memset(h, 0, sizeof(h));
    memcpy(h, data + 8, size - 8 < sizeof(h) ? size - 8 : sizeof(h));
    if (cm_lstm_header_parse(h, (size_t) fsize, &cfg, err, sizeof(err))
        == CM_OK)
    {
        n = cm_lstm_param_sizes(&cfg, sizes);
        if (n == 0 || 1024 + n * 4 != fsize || cfg.max_seq_len < 1
            || (cfg.tied && cfg.embed_dim != cfg.hidden)
            || (cfg.tied != 0 && cfg.tied != 1))
        {
            abort();
        }
    }
    return 0;
}
