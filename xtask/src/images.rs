//! Local Redis and PostgreSQL images built from the machine's own binaries: no registry is
//! reachable from the build machines, so nothing can be pulled. Each image is a root
//! filesystem holding the server binaries and the shared libraries `ldd` names, imported
//! with `docker import`, and built once: a tag that exists is kept. The tag carries the
//! server's version and the recipe's revision, so an upgrade or a recipe change builds anew.
//!
//! The images follow the official images' conventions, so the fixtures run either the same
//! way: `redis-server ARGS` on `PATH`; for PostgreSQL an entrypoint that initialises
//! `$PGDATA` (trust auth, `$POSTGRES_DB` created) and then runs `postgres ARGS` as user
//! `postgres`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util::{self, capture, which};

/// The variable naming the Redis image the container fixtures run.
pub const REDIS_IMAGE_ENV: &str = "STATE_TEST_REDIS_IMAGE";
/// The variable naming the PostgreSQL image the container fixtures run.
pub const POSTGRES_IMAGE_ENV: &str = "STATE_TEST_POSTGRES_IMAGE";
/// Bumped whenever what goes into an image changes, so old tags are not reused.
const RECIPE: u32 = 1;

/// The PostgreSQL entrypoint. Like the official image's, it prints "database system is
/// ready to accept connections" once for the initialisation and the server prints it once
/// more: the fixtures wait for the second, whichever image runs.
const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
set -e
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  initdb -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
  if [ -n "$POSTGRES_DB" ] && [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\"" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "initialised: database system is ready to accept connections" >&2
fi
exec "$@"
"#;

/// The Redis image's tag, built if missing.
pub fn redis() -> Result<String> {
    let server = which("redis-server").context(
        "redis-server is not installed, so no Redis image can be built: apt-get install redis-server",
    )?;
    let out =
        capture(Command::new(&server).arg("--version")).context("redis-server --version failed")?;
    // "Redis server v=7.0.15 sha=…"
    let version = out
        .split("v=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("redis-server --version names no version")?;
    let tag = format!("state-test-redis:{version}-r{RECIPE}");
    if exists(&tag) {
        println!("image      {tag} exists");
        return Ok(tag);
    }
    let root = fresh_root("redis")?;
    copy_into(&root, &server, Path::new("/usr/local/bin/redis-server"))?;
    copy_libraries(&root, &[server])?;
    users(&root, "redis", "/tmp")?;
    import(
        &root,
        &tag,
        &["ENV PATH=/usr/local/bin:/usr/bin:/bin", "USER redis"],
    )?;
    Ok(tag)
}

/// The PostgreSQL image's tag, built if missing.
pub fn postgres() -> Result<String> {
    let (major, bin) = postgres_bin()?;
    let out = capture(Command::new(bin.join("postgres")).arg("--version"))
        .context("postgres --version failed")?;
    // "postgres (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)"
    let version = out
        .split(") ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .context("postgres --version names no version")?;
    let tag = format!("state-test-postgres:{version}-r{RECIPE}");
    if exists(&tag) {
        println!("image      {tag} exists");
        return Ok(tag);
    }
    let root = fresh_root("postgres")?;
    let mut binaries = vec![PathBuf::from("/bin/sh")];
    for name in ["postgres", "initdb", "pg_ctl"] {
        binaries.push(bin.join(name));
    }
    // The modules initdb and the server load (PL/pgSQL, snowball dictionaries, encoding
    // conversions); not llvmjit: JIT is off by default and LLVM would double the size.
    let lib = bin.with_file_name("lib");
    for entry in read_dir(&lib)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".so") && !name.starts_with("llvmjit") {
            binaries.push(entry.path());
        }
    }
    for path in &binaries {
        copy_into(&root, path, path)?;
    }
    copy_libraries(&root, &binaries)?;
    let share = PathBuf::from(format!("/usr/share/postgresql/{major}"));
    copy_tree(&root, &share, &["man"])?;
    // Debian builds against the system's time zone data; the server needs its zone.
    for zone in ["UTC", "Etc/UTC", "GMT"] {
        let path = PathBuf::from("/usr/share/zoneinfo").join(zone);
        copy_into(&root, &path, &path)?;
    }
    users(&root, "postgres", "/var/lib/postgresql")?;
    // Writable by the postgres user without chown (which needs root here): initdb makes
    // $PGDATA inside, owned by that user with mode 0700 as the server wants.
    for dir in ["var/lib/postgresql", "var/run/postgresql"] {
        make_dir(&root.join(dir), 0o1777)?;
    }
    let entrypoint = root.join("usr/local/bin/docker-entrypoint.sh");
    write_file(&entrypoint, POSTGRES_ENTRYPOINT, 0o755)?;
    let path_env = format!(
        "ENV PATH={}:/usr/local/bin:/usr/bin:/bin",
        bin.to_string_lossy()
    );
    import(
        &root,
        &tag,
        &[
            &path_env,
            "ENV PGDATA=/var/lib/postgresql/data",
            "ENV TZ=UTC",
            "USER postgres",
            r#"ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]"#,
        ],
    )?;
    Ok(tag)
}

/// PostgreSQL 15 (the version the project supports) if installed, else the newest.
fn postgres_bin() -> Result<(u32, PathBuf)> {
    let mut versions: Vec<u32> = read_dir(Path::new("/usr/lib/postgresql"))
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.path().join("bin/postgres").is_file())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let major = if versions.contains(&15) {
        15
    } else {
        versions.pop().context(
            "PostgreSQL is not installed, so no PostgreSQL image can be built: \
             apt-get install postgresql",
        )?
    };
    Ok((
        major,
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin")),
    ))
}

fn exists(tag: &str) -> bool {
    capture(Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", tag])).is_some()
}

fn read_dir(dir: &Path) -> Result<Vec<std::fs::DirEntry>> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .collect())
}

/// An empty directory for an image's root filesystem, with a world-writable `/tmp`.
fn fresh_root(name: &str) -> Result<PathBuf> {
    let root = util::workspace_root()
        .join("target")
        .join("xtask-images")
        .join(name);
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove {}", root.display()))?;
    }
    make_dir(&root.join("tmp"), 0o1777)?;
    Ok(root)
}

fn make_dir(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", dir.display()))
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Copies `from` (following symlinks) to `to` inside `root`, keeping its mode.
fn copy_into(root: &Path, from: &Path, to: &Path) -> Result<()> {
    let dest = root.join(to.strip_prefix("/").unwrap_or(to));
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::copy(from, &dest)
        .with_context(|| format!("cannot copy {} into the image", from.display()))?;
    Ok(())
}

/// Copies a directory tree, skipping the top-level entries named in `skip`.
fn copy_tree(root: &Path, dir: &Path, skip: &[&str]) -> Result<()> {
    for entry in read_dir(dir)? {
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(root, &path, &[])?;
        } else {
            copy_into(root, &path, &path)?;
        }
    }
    Ok(())
}

/// Every shared library `ldd` names for `binaries` (the dynamic loader included), copied
/// to the same path inside `root`.
fn copy_libraries(root: &Path, binaries: &[PathBuf]) -> Result<()> {
    let mut libraries = BTreeSet::new();
    for binary in binaries {
        let out = capture(Command::new("ldd").arg(binary))
            .with_context(|| format!("ldd {} failed", binary.display()))?;
        for line in out.lines() {
            if line.contains("not found") {
                bail!(
                    "{}: a library is missing: {}",
                    binary.display(),
                    line.trim()
                );
            }
            // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux…"
            libraries.extend(
                line.split_whitespace()
                    .filter(|w| w.starts_with('/'))
                    .map(PathBuf::from),
            );
        }
    }
    for library in &libraries {
        copy_into(root, library, library)?;
    }
    Ok(())
}

/// `/etc/passwd` and `/etc/group` with root and one non-root user (uid and gid 999).
fn users(root: &Path, user: &str, home: &str) -> Result<()> {
    write_file(
        &root.join("etc/passwd"),
        &format!("root:x:0:0:root:/root:/bin/sh\n{user}:x:999:999:{user}:{home}:/bin/sh\n"),
        0o644,
    )?;
    write_file(
        &root.join("etc/group"),
        &format!("root:x:0:\n{user}:x:999:\n"),
        0o644,
    )
}

/// Packs `root` (files owned by root) and imports it as `tag`; removes the directory.
fn import(root: &Path, tag: &str, changes: &[&str]) -> Result<()> {
    let tarball = root.with_extension("tar");
    let packed = util::run_shown(
        Command::new("tar")
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(root)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    )?;
    if !packed.ok {
        bail!("packing {} failed", root.display());
    }
    let mut cmd = Command::new("docker");
    cmd.arg("import");
    for change in changes {
        cmd.args(["--change", change]);
    }
    cmd.arg(&tarball).arg(tag);
    let imported = util::run_shown(&mut cmd)?;
    let _ = std::fs::remove_file(&tarball);
    let _ = std::fs::remove_dir_all(root);
    if !imported.ok {
        bail!("docker import of {tag} failed");
    }
    let size =
        capture(Command::new("docker").args(["image", "inspect", "--format", "{{.Size}}", tag]))
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or_else(|| "?".to_owned(), |b| format!("{} MB", b / 1_000_000));
    println!("image      built {tag} ({size})");
    Ok(())
}
