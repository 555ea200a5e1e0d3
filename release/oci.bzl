"""Rules that build the release image, in the spirit of rules_oci but offline.

rules_oci cannot work here (its toolchains download crane/regctl/jq and its bases come from
public registries), so the steps are Go code (//release/cmd/imagebuilder, built by Bazel).
The rules are named kms_oci_*, not rules_oci's oci_image, oci_push...: theirs take other
attributes, and a reader (or a later move to rules_oci) must not mistake one for the other.


    distroless_base     Debian debs (pinned) -> base layer: users, /tmp, CA bundle, zoneinfo
    binary_layer        go_binary targets    -> layer of static binaries under /usr/bin, built
                                                for one architecture (cross-compiled if need be)
    kms_oci_image       layers               -> OCI image layout (directory) + digest file
    kms_oci_index       kms_oci_image per arch -> OCI image index layout (the release image)
    kms_oci_archive     kms_oci_index        -> OCI archive (tar of the layout)
    spdx_sbom           kms_oci_index        -> SPDX 2.3 JSON of its Go modules and debs
    kms_oci_push        kms_oci_index        -> `bazel run` target that pushes to a registry
    kms_oci_image_test  kms_oci_index        -> runs one platform's entrypoint from its unpacked
                                                root filesystem (needs root: chroot), under a
                                                qemu-user emulator for a foreign architecture
    deb_file            a Debian package     -> one file of it (the emulator)
    linux_packages      binary_layer + files -> kms_VERSION_ARCH.deb and kms-VERSION-1.ARCH.rpm
                                                (//release/cmd/packager)

Every output is reproducible. Plain builds use version "devel" (what `kms --version` says
then) and time 0; --stamp builds take the version, commit and SOURCE_DATE_EPOCH (or last
commit time) from tools/bazel.d/workspace_status.sh, which .bazelrc names.
"""

load("@local_config_platform//:constraints.bzl", "HOST_CONSTRAINTS")
load("@io_bazel_rules_go//go:def.bzl", "GoArchive")

OciLayerInfo = provider(
    doc = "A layer made by imagebuilder.",
    fields = {
        "layer": "File: the gzip tar",
        "info": "File: imagebuilder's JSON description of it",
        "binaries": "list of struct(arch, path, file, packages): a binary, its path in the image, and a file listing the Go import paths linked into it, for the SBOM",
        "lock": "File or None: the Debian lock the layer was made from",
    },
)

OciImageInfo = provider(
    doc = "An OCI image layout made by kms_oci_image (one image) or kms_oci_index (an image index).",
    fields = {
        "layout": "File (directory): the OCI image layout",
        "digest": "File: the manifest or index digest, sha256:...",
        "binaries": "list of struct(arch, path, file, packages), from the layers",
        "locks": "list of Debian lock Files",
    },
)

_BUILDER = attr.label(
    default = Label("//release/cmd/imagebuilder"),
    executable = True,
    cfg = "exec",
)

_STAMP = attr.bool(
    doc = "Set by the macros from --stamp: take version, commit and time from the workspace status.",
)

def _stamp_args(ctx, args):
    if ctx.attr.stamp:
        args.add("--stamp-status-file", ctx.info_file)
        return [ctx.info_file]
    return []

def _stamped():
    return select({
        Label("//release:stamp"): True,
        "//conditions:default": False,
    })

def _layer_outputs(ctx):
    return (
        ctx.actions.declare_file(ctx.label.name + ".tar.gz"),
        ctx.actions.declare_file(ctx.label.name + ".json"),
    )

def _distroless_base_impl(ctx):
    layer, info = _layer_outputs(ctx)
    args = ctx.actions.args()
    args.add("base-layer")
    args.add("--debian-lock", ctx.file.lock)
    args.add_all(ctx.files.debs, before_each = "--deb")
    args.add("--out", layer)
    args.add("--info", info)
    ctx.actions.run(
        executable = ctx.executable._builder,
        arguments = [args],
        inputs = [ctx.file.lock] + ctx.files.debs + _stamp_args(ctx, args),
        outputs = [layer, info],
        mnemonic = "DistrolessBase",
        progress_message = "Building base layer %{label}",
    )
    return [
        DefaultInfo(files = depset([layer])),
        OciLayerInfo(layer = layer, info = info, binaries = [], lock = ctx.file.lock),
    ]

_distroless_base = rule(
    implementation = _distroless_base_impl,
    attrs = {
        "lock": attr.label(mandatory = True, allow_single_file = [".json"]),
        "debs": attr.label(mandatory = True, allow_files = [".deb"]),
        "stamp": _STAMP,
        "_builder": _BUILDER,
    },
)

def distroless_base(name, lock, debs, **kwargs):
    """A distroless-equivalent base layer from the Debian packages of a lock file.

    Args:
      name: target name; outputs NAME.tar.gz and NAME.json.
      lock: the lock file (release/debian.lock.json).
      debs: the packages it pins (@kms_debian//:debs).
      **kwargs: common attributes.
    """
    _distroless_base(name = name, lock = lock, debs = debs, stamp = _stamped(), **kwargs)

_PURE = str(Label("@io_bazel_rules_go//go/config:pure"))
_STATIC = str(Label("@io_bazel_rules_go//go/config:static"))
_PLATFORMS = "//command_line_option:platforms"

# GOARCH of the machine Bazel runs on, from the constraints Bazel detected.
_HOST_ARCH = [
    arch
    for constraint, arch in {
        "@platforms//cpu:x86_64": "amd64",
        "@platforms//cpu:aarch64": "arm64",
    }.items()
    if constraint in HOST_CONSTRAINTS
]

def _static_go_impl(settings, attr):
    # For the machine's own architecture the platform stays as it is, so the binaries
    # are the ones tests and `bazel run` use, not a second build of them. Others are
    # cross-compiled: rules_go's platform for linux/ARCH, pure Go, the standard library
    # compiled for it from the SDK's sources.
    platforms = settings[_PLATFORMS]
    if attr.arch not in _HOST_ARCH:
        platforms = [Label("@io_bazel_rules_go//go/toolchain:linux_" + attr.arch)]
    return {_PURE: True, _STATIC: True, _PLATFORMS: platforms}

# The base has no libc or loader, and rules_go links dynamically whenever a C toolchain
# exists. The same settings as go_binary(pure = "on", static = "on"), so a binary already
# declared that way is not built twice.
_static_go = transition(
    implementation = _static_go_impl,
    inputs = [_PLATFORMS],
    outputs = [_PURE, _STATIC, _PLATFORMS],
)

def _importpath(archive_data):
    return archive_data.importpath

def _binary_layer_impl(ctx):
    layer, info = _layer_outputs(ctx)
    binaries = []
    links = []
    for target, path in ctx.attr.binaries.items():
        exe = target[DefaultInfo].files_to_run.executable
        if not exe or GoArchive not in target:
            fail("%s is not a go_binary" % target.label)

        # rules_go embeds no module list in the binary; what Bazel linked is the truth.
        packages = ctx.actions.declare_file("%s.%s.packages" % (ctx.label.name, target.label.name))
        pkg_args = ctx.actions.args()
        pkg_args.set_param_file_format("multiline")
        pkg_args.add_all(target[GoArchive].transitive, map_each = _importpath)
        ctx.actions.write(packages, pkg_args)
        binaries.append(struct(arch = ctx.attr.arch, path = path, file = exe, packages = packages))

        # NAME/kms etc.: the binaries by name, for the release bundle.
        link = ctx.actions.declare_file("%s/%s" % (ctx.label.name, path.split("/")[-1]))
        ctx.actions.symlink(output = link, target_file = exe)
        links.append(link)
    args = ctx.actions.args()
    args.add("binary-layer")
    for b in sorted(binaries, key = lambda b: b.path):
        args.add("--binary", "%s=%s" % (b.path, b.file.path))
    args.add("--out", layer)
    args.add("--info", info)
    ctx.actions.run(
        executable = ctx.executable._builder,
        arguments = [args],
        inputs = [b.file for b in binaries] + _stamp_args(ctx, args),
        outputs = [layer, info],
        mnemonic = "BinaryLayer",
        progress_message = "Building binary layer %{label}",
    )
    return [
        DefaultInfo(files = depset([layer] + links)),
        OciLayerInfo(layer = layer, info = info, binaries = binaries, lock = None),
    ]

_binary_layer = rule(
    implementation = _binary_layer_impl,
    attrs = {
        "binaries": attr.label_keyed_string_dict(mandatory = True, cfg = _static_go),
        "arch": attr.string(mandatory = True, values = ["amd64", "arm64"]),
        "stamp": _STAMP,
        "_builder": _BUILDER,
    },
)

def binary_layer(name, binaries, arch, **kwargs):
    """A layer of static binaries for linux/ARCH, 0755 root:root.

    Args:
      name: target name; outputs NAME.tar.gz, NAME.json, and the binaries as NAME/BASENAME.
      binaries: dict of go_binary target -> absolute path in the image. They are built
        pure Go and static; imagebuilder also refuses any dynamically linked binary.
      arch: GOARCH: amd64 or arm64. Other than the machine's own, cross-compiled.
      **kwargs: common attributes.
    """
    _binary_layer(name = name, binaries = binaries, arch = arch, stamp = _stamped(), **kwargs)

def _kms_oci_image_impl(ctx):
    layout = ctx.actions.declare_directory(ctx.label.name)
    digest = ctx.actions.declare_file(ctx.label.name + ".digest")
    args = ctx.actions.args()
    args.add("image")
    inputs = []
    binaries = []
    locks = []
    for l in ctx.attr.layers:
        li = l[OciLayerInfo]
        args.add("--layer", "%s=%s" % (li.layer.path, li.info.path))
        inputs += [li.layer, li.info]
        binaries += li.binaries
        if li.lock:
            locks.append(li.lock)
    args.add_all(ctx.attr.entrypoint, before_each = "--entrypoint")
    args.add("--title", ctx.attr.title)
    if ctx.attr.source:
        args.add("--source", ctx.attr.source)
    if ctx.attr.licenses:
        args.add("--licenses", ctx.attr.licenses)
    args.add("--layout", layout.path)
    args.add("--digest", digest)
    inputs += _stamp_args(ctx, args)
    ctx.actions.run(
        executable = ctx.executable._builder,
        arguments = [args],
        inputs = inputs,
        outputs = [layout, digest],
        mnemonic = "OciImage",
        progress_message = "Assembling OCI image %{label}",
    )
    return [
        DefaultInfo(files = depset([layout, digest]), runfiles = ctx.runfiles([layout])),
        OciImageInfo(layout = layout, digest = digest, binaries = binaries, locks = locks),
    ]

_kms_oci_image = rule(
    implementation = _kms_oci_image_impl,
    attrs = {
        "layers": attr.label_list(mandatory = True, providers = [OciLayerInfo]),
        "entrypoint": attr.string_list(mandatory = True),
        "title": attr.string(default = "kms"),
        "source": attr.string(),
        "licenses": attr.string(),
        "stamp": _STAMP,
        "_builder": _BUILDER,
    },
)

def kms_oci_image(name, layers, entrypoint, **kwargs):
    """An OCI image layout running ENTRYPOINT as 65532:65532, for one platform.

    Args:
      name: target name; outputs the layout directory NAME and NAME.digest.
      layers: distroless_base / binary_layer targets, bottom first.
      entrypoint: the command; the first word must be a binary of a layer.
      **kwargs: title, source (repository URL), licenses (SPDX expression) for the
        org.opencontainers.image.* annotations, and common attributes.
    """
    _kms_oci_image(name = name, layers = layers, entrypoint = entrypoint, stamp = _stamped(), **kwargs)

def _kms_oci_index_impl(ctx):
    layout = ctx.actions.declare_directory(ctx.label.name)
    digest = ctx.actions.declare_file(ctx.label.name + ".digest")
    args = ctx.actions.args()
    args.add("index")
    binaries = []
    locks = []
    for i in ctx.attr.images:
        info = i[OciImageInfo]
        args.add("--image", info.layout.path)
        binaries += info.binaries
        locks += [l for l in info.locks if l not in locks]
    args.add("--layout", layout.path)
    args.add("--digest", digest)
    ctx.actions.run(
        executable = ctx.executable._builder,
        arguments = [args],
        inputs = [i[OciImageInfo].layout for i in ctx.attr.images],
        outputs = [layout, digest],
        mnemonic = "OciIndex",
        progress_message = "Assembling OCI image index %{label}",
    )
    return [
        DefaultInfo(files = depset([layout, digest]), runfiles = ctx.runfiles([layout])),
        OciImageInfo(layout = layout, digest = digest, binaries = binaries, locks = locks),
    ]

kms_oci_index = rule(
    implementation = _kms_oci_index_impl,
    doc = """An OCI image index of kms_oci_image targets, one per platform: the layout directory
NAME (named TITLE:VERSION, e.g. kms:v1.2.3, for `podman load`) and NAME.digest. The images
must be one build (equal annotations); the index carries their annotations too.""",
    attrs = {
        "images": attr.label_list(mandatory = True, providers = [OciImageInfo]),
        "_builder": _BUILDER,
    },
)

def _kms_oci_archive_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".tar")
    layout = ctx.attr.image[OciImageInfo].layout
    ctx.actions.run(
        executable = ctx.executable._builder,
        arguments = ["archive", "--layout", layout.path, "--out", out.path],
        inputs = [layout],
        outputs = [out],
        mnemonic = "OciArchive",
        progress_message = "Writing OCI archive %{label}",
    )
    return [DefaultInfo(files = depset([out]))]

kms_oci_archive = rule(
    implementation = _kms_oci_archive_impl,
    doc = "The image index as an OCI archive (NAME.tar): `podman load -i NAME.tar`, `skopeo copy oci-archive:NAME.tar ...`.",
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "_builder": _BUILDER,
    },
)

def _spdx_sbom_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name + ".spdx.json")
    image = ctx.attr.image[OciImageInfo]
    if len(image.locks) != 1:
        fail("%s: want exactly one Debian lock (distroless_base layers)" % ctx.attr.image.label)
    args = ctx.actions.args()
    args.add("sbom")
    for b in image.binaries:
        args.add("--binary", "%s:%s=%s=%s" % (b.arch, b.path, b.file.path, b.packages.path))
    args.add("--go-mod", ctx.file._go_mod)
    args.add("--debian-lock", image.locks[0])
    args.add("--name", ctx.attr.title)
    if ctx.attr.licenses:
        args.add("--licenses", ctx.attr.licenses)
    args.add("--out", out)
    ctx.actions.run(
        executable = ctx.executable._builder,
        arguments = [args],
        inputs = [f for b in image.binaries for f in (b.file, b.packages)] +
                 image.locks + [ctx.file._go_mod] + _stamp_args(ctx, args),
        outputs = [out],
        mnemonic = "SpdxSbom",
        progress_message = "Writing SBOM %{label}",
    )
    return [DefaultInfo(files = depset([out]))]

_spdx_sbom = rule(
    implementation = _spdx_sbom_impl,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "title": attr.string(default = "kms"),
        "licenses": attr.string(),
        "stamp": _STAMP,
        "_builder": _BUILDER,
        "_go_mod": attr.label(default = Label("//:go.mod"), allow_single_file = True),
    },
)

def spdx_sbom(name, image, **kwargs):
    """An SPDX 2.3 JSON SBOM (NAME.spdx.json) of the image's binaries and base packages.

    Args:
      name: target name.
      image: an kms_oci_index (or kms_oci_image) target; binaries of every platform are listed.
      **kwargs: title, licenses, and common attributes.
    """
    _spdx_sbom(name = name, image = image, stamp = _stamped(), **kwargs)

def _runner(ctx, tool, image, extra_args, extra_files = []):
    """Writes a script that runs TOOL on IMAGE's layout from the runfiles tree."""
    script = ctx.actions.declare_file(ctx.label.name + ".sh")
    ws = ctx.workspace_name
    ctx.actions.write(
        output = script,
        is_executable = True,
        content = """#!/usr/bin/env bash
set -euo pipefail
runfiles=${{RUNFILES_DIR:-$0.runfiles}}
exec "$runfiles/{ws}/{tool}" --layout "$runfiles/{ws}/{layout}" {extra} "$@"
""".format(
            ws = ws,
            tool = tool.short_path,
            layout = image.layout.short_path,
            extra = " ".join([_shell_quote(a) for a in extra_args]),
        ),
    )
    runfiles = ctx.runfiles([tool, image.layout] + extra_files).merge(
        ctx.attr._tool[DefaultInfo].default_runfiles,
    )
    return DefaultInfo(executable = script, runfiles = runfiles)

def _shell_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"

def _kms_oci_push_impl(ctx):
    return [_runner(ctx, ctx.executable._tool, ctx.attr.image[OciImageInfo], [])]

kms_oci_push = rule(
    implementation = _kms_oci_push_impl,
    executable = True,
    doc = """`bazel run NAME -- --repository HOST/NAME[:TAG]` pushes the image index and prints
HOST/NAME@sha256:... . Plain HTTP only for loopback registries.""",
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "_tool": attr.label(default = Label("//release/cmd/push"), executable = True, cfg = "target"),
    },
)

def _kms_oci_image_test_impl(ctx):
    args = ["--arch", ctx.attr.arch, "--kek-command", ctx.attr.kek_command]
    files = []
    if ctx.file.emulator:
        # Relative to the workspace directory of the runfiles tree, where tests start.
        args += ["--emulator", ctx.file.emulator.short_path]
        files.append(ctx.file.emulator)
    return [_runner(ctx, ctx.executable._tool, ctx.attr.image[OciImageInfo], args, files)]

_kms_oci_image_test = rule(
    implementation = _kms_oci_image_test_impl,
    test = True,
    attrs = {
        "image": attr.label(mandatory = True, providers = [OciImageInfo]),
        "arch": attr.string(mandatory = True),
        "emulator": attr.label(allow_single_file = True),
        "kek_command": attr.string(mandatory = True),
        "_tool": attr.label(default = Label("//release/cmd/imagecheck"), executable = True, cfg = "target"),
    },
)

def kms_oci_image_test(name, image, arch, kek_command, emulator = None, tags = [], **kwargs):
    """Unpacks the linux/ARCH image of an index and runs its entrypoint with chroot as
    65532:65532, then drives the daemon over its socket (KMS v2 and v1beta1).

    It needs root (chroot, chown) and no sandbox, so it is tagged manual and local: run it
    with `tools/bazel test NAME` (release/ci.sh does).

    Args:
      name: target name.
      image: an kms_oci_index target.
      arch: the platform's architecture.
      kek_command: the daemon's --command inside the image (no shell there: word-split).
      emulator: a static qemu-user binary for ARCH, when ARCH is not the machine's: it runs
        the entrypoint and the KEK command (see //release/cmd/imagecheck).
      tags: more tags.
      **kwargs: common test attributes.
    """
    _kms_oci_image_test(
        name = name,
        image = image,
        arch = arch,
        emulator = emulator,
        kek_command = kek_command,
        tags = tags + ["manual", "local", "requires-root"],
        **kwargs
    )

def _deb_file_impl(ctx):
    out = ctx.actions.declare_file(ctx.label.name)
    if len(ctx.files.deb) != 1:
        fail("%s: want one .deb, got %d" % (ctx.attr.deb.label, len(ctx.files.deb)))
    ctx.actions.run(
        executable = ctx.executable._builder,
        arguments = ["deb-file", "--deb", ctx.files.deb[0].path, "--path", ctx.attr.path, "--out", out.path],
        inputs = ctx.files.deb,
        outputs = [out],
        mnemonic = "DebFile",
        progress_message = "Extracting %s from %s" % (ctx.attr.path, ctx.files.deb[0].basename),
    )
    return [DefaultInfo(files = depset([out]))]

deb_file = rule(
    implementation = _deb_file_impl,
    doc = "One file (0755) of a Debian package, e.g. a test tool from a pinned package.",
    attrs = {
        "deb": attr.label(mandatory = True, allow_files = [".deb"]),
        "path": attr.string(mandatory = True),
        "_builder": _BUILDER,
    },
)

def _linux_packages_impl(ctx):
    out = ctx.actions.declare_directory(ctx.label.name)
    args = ctx.actions.args()
    args.add("--arch", ctx.attr.arch)
    inputs = []
    for b in ctx.attr.binaries[OciLayerInfo].binaries:
        if b.arch != ctx.attr.arch:
            fail("%s holds %s binaries, not %s" % (ctx.attr.binaries.label, b.arch, ctx.attr.arch))
        args.add("--file", "%s=%s:0755" % (b.path, b.file.path))
        inputs.append(b.file)
    for target, path in ctx.attr.files.items():
        files = target.files.to_list()
        if len(files) != 1:
            fail("%s is not one file" % target.label)
        args.add("--file", "%s=%s" % (path, files[0].path))
        inputs += files
    args.add("--out-dir", out.path)
    inputs += _stamp_args(ctx, args)
    ctx.actions.run(
        executable = ctx.executable._packager,
        arguments = [args],
        inputs = inputs,
        outputs = [out],
        mnemonic = "LinuxPackages",
        progress_message = "Writing .deb and .rpm %{label}",
    )
    return [DefaultInfo(files = depset([out]))]

_linux_packages = rule(
    implementation = _linux_packages_impl,
    attrs = {
        "arch": attr.string(mandatory = True, values = ["amd64", "arm64"]),
        "binaries": attr.label(mandatory = True, providers = [OciLayerInfo]),
        "files": attr.label_keyed_string_dict(allow_files = True),
        "stamp": _STAMP,
        "_packager": attr.label(
            default = Label("//release/cmd/packager"),
            executable = True,
            cfg = "exec",
        ),
    },
)

def linux_packages(name, arch, binaries, files, **kwargs):
    """kms_VERSION_ARCH.deb and kms-VERSION-1.ARCH.rpm in the directory NAME.

    Args:
      name: target name: the output directory.
      arch: GOARCH: amd64 or arm64 (x86_64 or aarch64 in the .rpm).
      binaries: a binary_layer of that architecture: the image's binaries, 0755 at
        the same paths.
      files: dict of file label -> absolute path in the package, 0644.
      **kwargs: common attributes.
    """
    _linux_packages(name = name, arch = arch, binaries = binaries, files = files, stamp = _stamped(), **kwargs)
