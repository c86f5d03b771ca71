#!/usr/bin/env bash
# Best effort: the compilers and libraries HumanEval-X needs beyond the base image
# (Go + testify, Rust crates, Boost, the js-md5 npm package), and bubblewrap, the
# sandbox's filesystem jail. Languages whose toolchain is still missing afterwards are
# skipped by the evaluator and its tests, never counted as failures; without bwrap the
# sandbox warns that programs run unjailed. Needs root and apt; otherwise it says so and does nothing.
set -u
cache="${XDG_CACHE_HOME:-$HOME/.cache}/codegen/evaluation"
stamp="$cache/.toolchains-installed"
# bwrap came later than the stamp: machines set up before it still get it
[ -f "$stamp" ] && command -v bwrap >/dev/null && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_eval_toolchains: not root with apt-get; HumanEval-X languages without a toolchain will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null &&
apt-get install -y -qq --no-install-recommends bubblewrap golang-go golang-github-stretchr-testify-dev \
    librust-rand-dev librust-regex-dev librust-md5-dev libboost-dev libssl-dev g++ >/dev/null ||
    { echo "install_eval_toolchains: apt-get failed; some languages will be skipped" >&2; exit 0; }
if command -v npm >/dev/null; then
    mkdir -p "$cache" && npm install --silent --prefix "$cache" js-md5 >/dev/null 2>&1 ||
        echo "install_eval_toolchains: npm install js-md5 failed; JavaScript/162 counts as known-bad" >&2
fi
mkdir -p "$cache" && touch "$stamp"
