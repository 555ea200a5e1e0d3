"""proto_common, as protobuf exports it, taken from Debian's rules_proto."""

load("@rules_proto//proto:proto_common.bzl", _proto_common = "proto_common")

proto_common = _proto_common
