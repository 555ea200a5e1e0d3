"""ProtoInfo, as protobuf exports it, taken from Debian's rules_proto."""

load("@rules_proto//proto:defs.bzl", _ProtoInfo = "ProtoInfo")

ProtoInfo = _ProtoInfo
