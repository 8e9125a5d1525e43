# credit-management serve as a container (docs/service.md, "Deploy it").
#   docker build -t credit-management .
#   docker run -p 8080:8080 -v credits:/data credit-management            (SQLite in the volume)
#   docker run --rm -v credits:/data credit-management keys create --role admin

# Build: compile the package, pack it, install it with the drivers and the metrics exporter.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY . .
RUN npx tsup --silent && npm pack --silent --ignore-scripts && mkdir /app \
  && cd /app && npm init -y >/dev/null \
  && npm install --no-audit --no-fund --omit=dev /src/credit-management-*.tgz \
     better-sqlite3 pg mongodb @opentelemetry/api @opentelemetry/sdk-metrics @opentelemetry/resources @opentelemetry/exporter-prometheus

# Run: the installed package only, as the unprivileged `node` user.
FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    CREDIT_PORT=8080 \
    CREDIT_SQLITE_PATH=/data/credits.sqlite
WORKDIR /app
COPY --from=build --chown=root:root /app /app
RUN mkdir /data && chown node:node /data
VOLUME /data
USER node
EXPOSE 8080
# Liveness of the process; readiness (the store) is /health/ready, for the orchestrator's probe.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.CREDIT_PORT||8080)+'/health/live').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["node", "/app/node_modules/credit-management/dist/cli/index.js"]
CMD ["serve"]
