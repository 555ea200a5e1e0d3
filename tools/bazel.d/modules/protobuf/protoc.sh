#!/bin/sh
# Debian's protoc (package protobuf-compiler) stands in for protobuf's own.
exec /usr/bin/protoc "$@"
