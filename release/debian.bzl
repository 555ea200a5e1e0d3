"""Fetches the Debian packages pinned in release/debian.lock.json.

The lock holds archive-relative paths and sha256 sums but no host: the mirrors are read
from apt's own configuration on the machine that runs Bazel (/etc/apt/sources.list and
sources.list.d, one-line and deb822 formats), or from --repo_env=KMS_DEBIAN_MIRRORS="URL
..." where there is none. Bazel's repository cache keeps each .deb by its sha256, so after
one fetch the build works offline, and a mirror serving different bytes fails the build.

MODULE.bazel:
    debian = use_extension("//release:debian.bzl", "debian")
    use_repo(debian, "kms_debian", "kms_qemu")
"""

def _words(s):
    return [w for w in s.replace("\t", " ").split(" ") if w]

def _deb822_uris(text):
    uris = []
    for stanza in text.split("\n\n"):
        fields = {}
        key = None
        for line in stanza.split("\n"):
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key:
                fields[key] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if "deb" in _words(fields.get("types", "")) and fields.get("enabled", "yes").lower() != "no":
            uris.extend(_words(fields.get("uris", "")))
    return uris

def _one_line_uris(text):
    uris = []
    for line in text.split("\n"):
        words = _words(line.split("#")[0])
        if not words or words[0] != "deb":
            continue
        words = words[1:]

        # Options: "[arch=amd64 signed-by=...]", possibly split over words.
        if words and words[0].startswith("["):
            for i, w in enumerate(words):
                if w.endswith("]"):
                    words = words[i + 1:]
                    break
        if words:
            uris.append(words[0])
    return uris

def _apt_mirrors(rctx):
    override = rctx.os.environ.get("KMS_DEBIAN_MIRRORS", "")
    if override:
        return _words(override)
    uris = []
    files = [rctx.path("/etc/apt/sources.list")]
    d = rctx.path("/etc/apt/sources.list.d")
    if d.exists:
        files += sorted(d.readdir(), key = lambda p: p.basename)
    for f in files:
        if not f.exists:
            continue
        if f.basename.endswith(".sources"):
            uris += _deb822_uris(rctx.read(f))
        elif f.basename.endswith(".list"):
            uris += _one_line_uris(rctx.read(f))
    mirrors = []
    for u in uris:
        u = u.rstrip("/")
        if u.split("://")[0] in ("http", "https", "file") and u not in mirrors:
            mirrors.append(u)
    return mirrors

def _debian_packages_impl(rctx):
    lock = json.decode(rctx.read(rctx.attr.lock))
    mirrors = _apt_mirrors(rctx)
    if not mirrors:
        fail("no Debian mirror in apt's configuration; set --repo_env=KMS_DEBIAN_MIRRORS=\"URL ...\"")
    debs = []
    for p in lock["packages"]:
        out = "debs/%s_%s_%s.deb" % (p["name"], p["version"].replace(":", "%3a"), p["architecture"])
        rctx.download(
            url = ["%s/%s" % (m, p["filename"]) for m in mirrors],
            output = out,
            sha256 = p["sha256"],
        )
        debs.append(out)
    rctx.file("BUILD.bazel", """\
# Debian packages pinned by //release:debian.lock.json, fetched by //release:debian.bzl.
filegroup(
    name = "debs",
    srcs = {debs},
    visibility = ["//visibility:public"],
)
""".format(debs = json.encode(debs)))

debian_packages = repository_rule(
    implementation = _debian_packages_impl,
    attrs = {"lock": attr.label(mandatory = True, allow_single_file = [".json"])},
    environ = ["KMS_DEBIAN_MIRRORS"],
    doc = "Downloads and sha256-checks the packages of a Debian lock file.",
)

def _debian_impl(mctx):
    debian_packages(name = "kms_debian", lock = Label("//release:debian.lock.json"))
    debian_packages(name = "kms_qemu", lock = Label("//release:qemu.lock.json"))
    return mctx.extension_metadata(reproducible = True)

debian = module_extension(
    implementation = _debian_impl,
    doc = """Creates @kms_debian with the packages of release/debian.lock.json (the image's
base) and @kms_qemu with release/qemu.lock.json's (the emulator that runs the arm64 image
in a test; fetched only when that test is built).""",
)
