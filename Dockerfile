# cinematch: nginx + the module, the cinematch binary (daemons), the web app.
#
#   podman build -t cinematch .                  (or docker build)
#   podman build --build-arg BUILD_IMAGE=nvidia/cuda:12.6.3-devel-ubuntu24.04 \
#                --build-arg RUNTIME_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu24.04 -t cinematch:cuda .
#
# Stages: build (C library, binary, nginx module against the distribution's
# nginx), web (npm ci + vite build), runtime (slim: nginx, the runtime
# libraries, the binary, the module, web/dist, the SQL migrations).
# The CUDA arguments swap the base images: the Makefile compiles
# shared/cuda/*.cu when nvcc is on PATH, and the daemons fall back to the CPU
# when no GPU is visible.  Only the Debian 12 build is checked here
# (./build.sh image, docs/OPERATIONS.md); the CUDA images are Ubuntu-based and
# untested.
#
# WEB_SOURCE=npm builds web/ in a Node.js image (Debian 12's Node.js is too old
# for Vite); WEB_SOURCE=prebuilt copies web/dist from the build context
# (./build.sh builds it), for builders without that image.

ARG BUILD_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim
ARG NODE_IMAGE=node:20-bookworm-slim
ARG WEB_SOURCE=npm

# ---- build: libcinematch, cinematch, ngx_http_cinematch_module.so ----------
FROM ${BUILD_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      build-essential pkg-config ca-certificates nginx nginx-dev libssl-dev zlib1g-dev \
      libpcre3-dev libpq-dev libhiredis-dev libjansson-dev libopenblas-dev liblapacke-dev \
      libcmocka-dev libjwt-dev libsodium-dev libpcre2-dev libcurl4-openssl-dev libsystemd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile VERSION ./
COPY shared ./shared
COPY workers ./workers
COPY ngx_module ./ngx_module
COPY tests ./tests
# (bash -c: nginx's conf_flags is bash, and SHELL is not honoured by every builder)
RUN bash -euo pipefail -c 'make -j"$(nproc)" lib bin \
 && cp -a /usr/share/nginx/src /tmp/ngx && cd /tmp/ngx && source ./conf_flags \
 && CM_ROOT=/src ./configure "${NGX_CONF_FLAGS[@]}" --add-dynamic-module=/src/ngx_module >/dev/null \
 && make -f objs/Makefile modules -j"$(nproc)" >/dev/null \
 && cp objs/ngx_http_cinematch_module.so /src/build/'

# ---- web: the SPA and the API docs page -------------------------------------
FROM ${NODE_IMAGE} AS web-npm
WORKDIR /src/web
COPY web/package.json web/package-lock.json web/.npmrc ./
RUN npm ci --no-audit --no-fund
COPY web ./
COPY docs/openapi.yaml /src/docs/openapi.yaml
RUN npm run build

FROM scratch AS web-prebuilt
COPY web/dist /src/web/dist

FROM web-${WEB_SOURCE} AS web

# ---- runtime ------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      nginx ca-certificates libpq5 libhiredis0.14 libjansson4 libopenblas0-pthread \
      liblapacke libsodium23 libpcre2-8-0 libssl3 libcurl4 tini \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
 && useradd --system --user-group --home-dir /var/lib/cinematch --shell /usr/sbin/nologin cinematch \
 && usermod -aG cinematch www-data \
 && install -d -o cinematch -g cinematch /var/lib/cinematch /var/lib/cinematch/models /run/cinematch \
 && install -d /etc/cinematch /usr/share/cinematch
COPY --from=build /src/build/cinematch /usr/bin/cinematch
COPY --from=build /src/build/ngx_http_cinematch_module.so /usr/lib/nginx/modules/
COPY --from=web /src/web/dist /usr/share/cinematch/web
COPY sql /usr/share/cinematch/sql
COPY conf/nginx.conf /etc/nginx/nginx.conf
COPY conf/snippets/cinematch-security-headers.conf /etc/nginx/snippets/
COPY conf/systemd /usr/share/cinematch/systemd
COPY docs /usr/share/doc/cinematch
EXPOSE 80 443
# One process per container: this image runs nginx by default; run the
# daemons from the same image with another command, e.g.
#   cinematch infer --id 0 --group cinematch      (shares /run/cinematch and /dev/shm with nginx)
#   cinematch migrate --dir /usr/share/cinematch/sql
# Mount the certificates, /etc/cinematch (nginx-dsn.conf, jwt.key) and
# /var/lib/cinematch/models.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["nginx", "-g", "daemon off;"]
