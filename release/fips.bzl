"""The Go SDK that builds //:kms_fips against the CMVP-certified Go Cryptographic Module.

Go selects the module with GOFIPS140 at build time: GOFIPS140=v1.0.0 compiles the standard
library against the snapshot in GOROOT/lib/fips140 (its crypto/internal/fips140/v1.0.0-...
packages) and makes fips140=on the binary's default GODEBUG. rules_go 0.59 knows nothing of
GOFIPS140: its standard library action runs `go install std` with an environment of its own,
in a GOROOT of its own that holds src and pkg but not lib. So:

  - kms_fips_goroot is the host's GOROOT (its entries symlinked) with a bin/go that runs the
    real go command with GOFIPS140 set, and lends lib/fips140 to rules_go's GOROOT for the
    run. The snapshot is unpacked below that GOROOT, so the compiler records its files as
    $GOROOT/... and builds stay reproducible. `go install std` compiles the snapshot's
    packages (crypto/internal/fips140/v1.0.0-c2097c7c/...) but installs none of them, their
    directory not being under GOROOT/src, and rules_go links against installed archives:
    bin/go copies them from the build cache to where they would be installed. rules_go
    lists the standard packages from the SDK's files, so the snapshot's sources are also
    in this GOROOT's src, at those import paths. Only this SDK sees GOFIPS140: //:kms and
    everything else keep the host SDK (go_sdk.host() in MODULE.bazel).
  - kms_fips_go is that GOROOT as a rules_go SDK; release/BUILD.bazel declares its
    toolchain, which matches only the platform //release:linux_amd64_fips.
  - go_fips_binary switches a go_binary to that SDK with a transition to that platform.
    (A transition on rules_go's sdk_name would select it too, but that Starlark flag
    follows into the exec configuration, so the tools of the build would use the FIPS
    SDK as well: one more standard library compiled, minutes on 2 cores.)
  - The GODEBUG default that the go command would link in (fips140=on) is the go_binary's
    x_defs entry for runtime.godebugDefault (src/cmd/kms/BUILD.bazel).

The alternatives were worse: a go.env in the SDK is not copied into rules_go's GOROOT, a
patched rules_go would be a fork to carry, and --action_env does not reach the action.
"""

load("@io_bazel_rules_go//go:def.bzl", "GoArchive")
load("@io_bazel_rules_go//go:deps.bzl", "go_wrap_sdk")

# The CMVP-certified snapshot shipped with Go 1.26 (GOROOT/lib/fips140/v1.0.0.txt names the
# zip, v1.0.0-c2097c7c); `kms_fips --version` prints it as crypto/fips140.Version() says.
GOFIPS140 = "v1.0.0"

# The SDK's repository name.
FIPS_SDK = "kms_fips_go"

_GO_WRAPPER = """#!/bin/sh
# The go command of the {sdk} SDK (release/fips.bzl): the host's, building against the
# Go Cryptographic Module {version}. rules_go runs it in a GOROOT of its own without lib/:
# lend it lib/fips140 for the run, and unpack the snapshot below it, where the compiler
# records file names as $GOROOT/... (the same in every sandbox and checkout).
# (Actions' PATH need not hold coreutils: they are named by path.)
root=${{GOROOT:-{self}}}
lent=
if [ ! -e "$root/lib" ]; then
	/bin/mkdir "$root/lib" && /bin/ln -s "{goroot}/lib/fips140" "$root/lib/fips140" && lent=1
fi
export GOFIPS140={version} GOMODCACHE="$root/.fips140"
"{goroot}/bin/go" "$@"
status=$?
# `go install std` compiles the snapshot's packages but does not install them: their
# directory, in the module cache, is not under GOROOT/src. rules_go links against the
# installed archives, so copy them from the build cache to where they would be installed.
if [ "$1" = install ] && [ $status = 0 ]; then
	# The same flags but -toolexec: rules_go's strips the build ids that go list needs to
	# find the archives in the cache (they are compiled once more without it).
	shift
	skip=
	for arg do
		shift
		if [ -n "$skip" ]; then
			skip=
			continue
		fi
		case $arg in
		-toolexec) skip=1 ;;
		-toolexec=*) ;;
		*) set -- "$@" "$arg" ;;
		esac
	done
	list=$("{goroot}/bin/go" list -deps -export -f '{{{{printf "%s\t%s\t%s" .ImportPath .Export .Target}}}}' "$@") || {{
		echo "bin/go: go list -export $*: failed" >&2
		status=1
	}}
	pkg=$(echo "$list" | /usr/bin/awk -F '\t' '$1 == "runtime" {{ sub("/runtime[.]a$", "", $3); print $3 }}')
	if [ -z "$pkg" ]; then
		echo "bin/go: go list -export $*: no install directory for runtime" >&2
		status=1
	fi
	echo "$list" | /usr/bin/awk -F '\t' '$1 ~ "^crypto/internal/fips140/v" {{ print $1, $2 }}' | while read -r path archive; do
		/bin/mkdir -p "$pkg/${{path%/*}}" && /bin/cp "$archive" "$pkg/$path.a" || exit 1
	done || status=1
fi
if [ -n "$lent" ]; then
	/bin/rm -rf "$root/lib" "$root/.fips140"
fi
exit $status
"""

def _link_children(rctx, src, dst, but = []):
    for entry in rctx.path(src).readdir():
        if entry.basename not in but:
            rctx.symlink(entry, dst + "/" + entry.basename)

def _fips_goroot_impl(rctx):
    go = rctx.which("go")
    if not go:
        fail("no go command on PATH")
    res = rctx.execute([go, "env", "GOROOT"])
    if res.return_code:
        fail("go env GOROOT: " + res.stderr)
    goroot = res.stdout.strip()
    alias = rctx.path(goroot + "/lib/fips140/" + rctx.attr.version + ".txt")
    if not alias.exists:
        fail("%s/lib/fips140 has no snapshot %s" % (goroot, rctx.attr.version))
    snapshot = rctx.read(alias).strip()

    # The host's GOROOT, every entry symlinked, but for bin/go and, along the way to
    # src/crypto/internal/fips140, real directories: there the snapshot's sources are added
    # as the go command sees them with GOFIPS140 (crypto/internal/fips140/v1.0.0-...), so
    # that rules_go's list of standard packages, made from the SDK's files, names them.
    _link_children(rctx, goroot, ".", but = ["bin", "src"])
    path = "src"
    for child in ["crypto", "internal", "fips140", None]:
        _link_children(rctx, goroot + "/" + path, path, but = [child])
        if child:
            path += "/" + child
    rctx.extract(
        goroot + "/lib/fips140/" + snapshot + ".zip",
        output = path,
        stripPrefix = "golang.org/fips140@%s/fips140" % snapshot,
    )
    rctx.symlink(goroot + "/bin/gofmt", "bin/gofmt")
    rctx.file("bin/go", _GO_WRAPPER.format(
        sdk = FIPS_SDK,
        version = rctx.attr.version,
        goroot = goroot,
        self = str(rctx.path(".")),
    ), executable = True)
    rctx.file("ROOT", "")
    rctx.file("BUILD.bazel", 'exports_files(["ROOT"])\n')

_fips_goroot = repository_rule(
    implementation = _fips_goroot_impl,
    attrs = {"version": attr.string(mandatory = True)},
    environ = ["PATH"],
)

def _fips_sdk_impl(_mctx):
    _fips_goroot(name = "kms_fips_goroot", version = GOFIPS140)
    go_wrap_sdk(name = FIPS_SDK, root_file = "@kms_fips_goroot//:ROOT", register_toolchains = False)

fips_sdk = module_extension(implementation = _fips_sdk_impl)

_PLATFORMS = "//command_line_option:platforms"

def _to_fips_sdk_impl(_settings, _attr):
    return {_PLATFORMS: [Label("//release:linux_amd64_fips")]}

_to_fips_sdk = transition(
    implementation = _to_fips_sdk_impl,
    inputs = [],
    outputs = [_PLATFORMS],
)

def _go_fips_binary_impl(ctx):
    binary = ctx.attr.binary[0]
    exe = binary[DefaultInfo].files_to_run.executable
    out = ctx.actions.declare_file(ctx.label.name)
    ctx.actions.symlink(output = out, target_file = exe, is_executable = True)
    return [
        DefaultInfo(files = depset([out]), executable = out),
        # binary_layer (oci.bzl) lists the packages it linked for the SBOM.
        binary[GoArchive],
    ]

go_fips_binary = rule(
    implementation = _go_fips_binary_impl,
    doc = "binary, a go_binary, built with the kms_fips_go SDK (GOFIPS140=%s)." % GOFIPS140,
    attrs = {"binary": attr.label(mandatory = True, executable = True, cfg = _to_fips_sdk)},
    executable = True,
)
