# cinematch build: libcinematch (static, PIC), the multi-call binary, unit tests.
# The nginx module is built by build.sh through nginx's own configure.
#
#   make                 release build into build/
#   make SAN=1           ASan+UBSan build into build-san/
#   make COV=1           gcov build into build-cov/
#   make test            build and run the unit tests

CC       ?= cc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
PKGS     := libpq hiredis jansson libsodium libpcre2-8 libjwt openblas libcurl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := $(shell pkg-config --libs $(PKGS)) -llapacke

WARN     := -Wall -Wextra -Wshadow -Wpointer-arith -Wstrict-prototypes \
            -Wmissing-prototypes -Wformat=2 -Wno-unused-parameter \
            -Wvla -Wimplicit-fallthrough
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -fPIC -pthread $(WARN) -Ishared/include $(PKG_CFLAGS) \
            -D_GNU_SOURCE -DCM_VERSION=\"$(VERSION)\"
LDLIBS   += $(PKG_LIBS) -lcrypto -lm -lpthread -lrt

VERSION  := $(shell cat VERSION 2>/dev/null || echo 0.0.0)

ifeq ($(SAN),1)
  B       := build-san
  CFLAGS  += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer \
             -fno-sanitize-recover=undefined
  LDFLAGS += -fsanitize=address,undefined
else ifeq ($(COV),1)
  B       := build-cov
  CFLAGS  += -O0 --coverage
  LDFLAGS += --coverage
else
  B       := build
endif
ifeq ($(WERROR),1)
  CFLAGS  += -Werror
endif

LIB_SRC  := $(wildcard shared/src/*.c)
LIB_OBJ  := $(LIB_SRC:shared/src/%.c=$(B)/lib/%.o)
CUDA_SRC := $(wildcard shared/cuda/*.cu)
# CUDA is built only when nvcc exists AND its runtime and cuBLAS link; a
# toolkit without those libraries (or a bare nvcc) builds the CPU-only binary.
ifneq ($(NVCC),)
  ifneq ($(CUDA_SRC),)
    CUDA_HOME := $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
    CUDA_LIBDIR := $(firstword $(foreach d,$(CUDA_HOME)/lib64 $(CUDA_HOME)/lib \
                     $(wildcard $(CUDA_HOME)/targets/*/lib) /usr/lib/x86_64-linux-gnu,\
                     $(if $(wildcard $(d)/libcudart.so),$(if $(wildcard $(d)/libcublas.so),$(d)))))
    ifneq ($(CUDA_LIBDIR),)
      CUDA_LINK_OK := $(shell printf 'int main(void){return 0;}' | $(CC) -x c - -o /dev/null \
                        -L$(CUDA_LIBDIR) -lcudart -lcublas -lstdc++ >/dev/null 2>&1 && echo yes)
    endif
    ifeq ($(CUDA_LINK_OK),yes)
      CUDA_OBJ := $(CUDA_SRC:shared/cuda/%.cu=$(B)/cuda/%.o)
      CFLAGS   += -DCM_HAVE_CUDA=1
      LDLIBS   += -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart -lcublas -lstdc++
    else
      $(info cinematch: nvcc found at $(NVCC) but libcudart/libcublas do not link; building CPU only)
    endif
  endif
endif
# PDF export (shared/src/chatdoc.c) when libharu is installed.
ifneq ($(wildcard /usr/include/hpdf.h),)
  CFLAGS   += -DCM_HAVE_HPDF=1
  LDLIBS   += -lhpdf
endif
WRK_SRC  := $(wildcard workers/*.c)
WRK_OBJ  := $(WRK_SRC:workers/%.c=$(B)/workers/%.o)
TEST_SRC := $(wildcard tests/unit/test_*.c)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(B)/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)

.PHONY: all lib bin tests test clean fuzz
all: lib bin tests
lib: $(B)/libcinematch.a
bin: $(B)/cinematch
tests: $(TEST_BIN)

$(B)/lib/%.o: shared/src/%.c $(wildcard shared/include/cinematch/*.h) | $(B)/lib
	$(CC) $(CFLAGS) -c $< -o $@
$(B)/cuda/%.o: shared/cuda/%.cu $(wildcard shared/cuda/*.cuh shared/include/cinematch/*.h) | $(B)/cuda
	$(NVCC) -O2 -Xcompiler -fPIC -Ishared/include -c $< -o $@
$(B)/libcinematch.a: $(LIB_OBJ) $(CUDA_OBJ)
	rm -f $@ && ar rcs $@ $^
$(B)/workers/%.o: workers/%.c $(wildcard workers/*.h shared/include/cinematch/*.h) | $(B)/workers
	$(CC) $(CFLAGS) -Iworkers -c $< -o $@
$(B)/cinematch: $(WRK_OBJ) $(B)/libcinematch.a
	$(CC) $(LDFLAGS) -o $@ $(WRK_OBJ) $(B)/libcinematch.a $(LDLIBS)
$(B)/tests/%: tests/unit/%.c $(B)/libcinematch.a | $(B)/tests
	$(CC) $(CFLAGS) -Itests/unit -o $@ $< $(B)/libcinematch.a $(LDFLAGS) $(LDLIBS) -lcmocka

# libFuzzer targets (clang); each parser gets one.
fuzz: $(B)/libcinematch.a
	@mkdir -p $(B)/fuzz
	@for f in $(FUZZ_SRC); do n=$$(basename $$f .c); \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined -Ishared/include \
	    $(PKG_CFLAGS) -D_GNU_SOURCE $$f $(LIB_SRC) -o $(B)/fuzz/$$n $(PKG_LIBS) \
	    -lcrypto -lm -lpthread -lrt || exit 1; done

test: tests
	@tests/run_unit.sh $(B)

$(B)/lib $(B)/cuda $(B)/workers $(B)/tests:
	mkdir -p $@

clean:
	rm -rf build build-san build-cov build-ngx
