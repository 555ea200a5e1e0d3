"""ProtoLangToolchainInfo, as protobuf exports it, taken from Debian's rules_proto."""

load("@rules_proto//proto:proto_common.bzl", _ProtoLangToolchainInfo = "ProtoLangToolchainInfo")

ProtoLangToolchainInfo = _ProtoLangToolchainInfo
