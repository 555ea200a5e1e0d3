"""proto_library, as protobuf exports it, taken from Debian's rules_proto."""

load("@rules_proto//proto:defs.bzl", _proto_library = "proto_library")

proto_library = _proto_library
