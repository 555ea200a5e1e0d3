"""The buildozer_binary extension bazel_tools names; `bazel mod tidy` runs its buildozer.exe.

The real module downloads a prebuilt binary; this one builds buildozer from the Go module
proxy with the Go on PATH (tools/bazel provides it), checked against the checksum database
like any `go install`. The version is the one gazelle 0.42.0's go.mod requires.
"""

_BUILDOZER = "github.com/bazelbuild/buildtools/buildozer@v0.0.0-20240918101019-be1c24cc9a44"

def _buildozer_repo_impl(rctx):
    go = rctx.which("go")
    if not go:
        fail("buildozer_binary: no `go` on PATH to build buildozer with")
    res = rctx.execute(
        [go, "install", _BUILDOZER],
        environment = {"GOBIN": str(rctx.path(".")), "GOFLAGS": "", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"},
        timeout = 900,
    )
    if res.return_code != 0:
        fail("buildozer_binary: go install %s failed:\n%s" % (_BUILDOZER, res.stderr))
    rctx.symlink("buildozer", "buildozer.exe")
    rctx.file("BUILD.bazel", 'exports_files(["buildozer.exe"])\n')

_buildozer_repo = repository_rule(implementation = _buildozer_repo_impl)

def _buildozer_binary_impl(_mctx):
    _buildozer_repo(name = "buildozer_binary")

buildozer_binary = module_extension(implementation = _buildozer_binary_impl)
