//! Files for activities: a path is taken only if it is absolute, has no `..`, and resolves
//! (symlinks followed) under one of the policy's file roots; each refusal names its rule.
//! Writes are atomic (a temporary file beside, synced, renamed) and checked by SHA-256.

use std::{
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Component, Path, PathBuf},
};

use crate::sha256_hex;
use base64::Engine;
use dirigent_proto::activity::{FileContent, FileEntry, FileWritten, ReadArgs, WriteArgs};

/// The most one read or write may hold.
pub(super) const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// The most entries one listing shows.
const MAX_ENTRIES: usize = 10_000;

/// Where `path` really is, if the roots allow it. `for_write`: the file need not exist, but
/// its directory must, and it must not be a symlink.
pub(super) fn resolve(roots: &[PathBuf], path: &str, for_write: bool) -> Result<PathBuf, String> {
    let asked = Path::new(path);
    if !asked.is_absolute() {
        return Err(format!("refused: {path:?} is not an absolute path"));
    }
    if asked.components().any(|part| part == Component::ParentDir) {
        return Err(format!(
            "refused: {path:?} holds `..`; give the path itself"
        ));
    }
    if roots.is_empty() {
        return Err("refused: this agent's policy gives no file roots (`file_roots` in its settings file, or --file-root)".to_owned());
    }
    let real = match for_write {
        false => asked
            .canonicalize()
            .map_err(|err| format!("{path}: {err}"))?,
        true => {
            if asked
                .symlink_metadata()
                .is_ok_and(|meta| meta.file_type().is_symlink())
            {
                return Err(format!(
                    "refused: {path} is a symlink; files are not written through symlinks"
                ));
            }
            let (Some(dir), Some(name)) = (asked.parent(), asked.file_name()) else {
                return Err(format!("refused: {path:?} names no file"));
            };
            dir.canonicalize()
                .map_err(|err| format!("{}: {err}", dir.display()))?
                .join(name)
        }
    };
    let inside = roots
        .iter()
        .any(|root| root.canonicalize().is_ok_and(|root| real.starts_with(root)));
    if !inside {
        let roots: Vec<String> = roots
            .iter()
            .map(|root| root.display().to_string())
            .collect();
        let how = match real.as_path() == asked {
            true => String::new(),
            false => format!(" (a symlink leads to {})", real.display()),
        };
        return Err(format!(
            "refused: {path}{how} is outside this agent's file roots ({})",
            roots.join(", ")
        ));
    }
    Ok(real)
}

pub(super) fn list(dir: &Path) -> Result<Vec<FileEntry>, String> {
    let shown = |err: std::io::Error| format!("{}: {err}", dir.display());
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(shown)?.take(MAX_ENTRIES) {
        let entry = entry.map_err(shown)?;
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let kind = match meta.file_type() {
            kind if kind.is_symlink() => "symlink",
            kind if kind.is_dir() => "dir",
            kind if kind.is_file() => "file",
            _ => "other",
        };
        entries.push(FileEntry {
            name: entry.file_name().to_string_lossy().into_owned(),
            kind: kind.to_owned(),
            size: meta.len(),
            mode: format!("{:o}", meta.permissions().mode() & 0o7777),
            modified_at: jiff::Timestamp::from_second(meta.mtime()).ok(),
        });
    }
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

pub(super) fn read(path: &Path, args: &ReadArgs) -> Result<FileContent, String> {
    let shown = |err: std::io::Error| format!("{}: {err}", path.display());
    let mut file = std::fs::File::open(path).map_err(shown)?;
    let size = file.metadata().map_err(shown)?.len();
    let left = size.saturating_sub(args.offset);
    let length = args.length.unwrap_or(left).min(left);
    if MAX_FILE_BYTES < length {
        return Err(format!(
            "{} holds {length} bytes from offset {}, over the {} MiB one read takes: read it in parts with offset and length",
            path.display(),
            args.offset,
            MAX_FILE_BYTES / (1024 * 1024)
        ));
    }
    file.seek(SeekFrom::Start(args.offset)).map_err(shown)?;
    let mut content = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    file.take(length).read_to_end(&mut content).map_err(shown)?;
    Ok(FileContent {
        sha256: sha256_hex(&content),
        content_base64: base64::engine::general_purpose::STANDARD.encode(&content),
        size,
    })
}

pub(super) fn write(path: &Path, args: &WriteArgs) -> Result<FileWritten, String> {
    let content = base64::engine::general_purpose::STANDARD
        .decode(&args.content_base64)
        .map_err(|err| format!("content_base64 is not base64: {err}"))?;
    if MAX_FILE_BYTES < content.len() as u64 {
        return Err(format!(
            "over the {} MiB one write takes",
            MAX_FILE_BYTES / (1024 * 1024)
        ));
    }
    let digest = sha256_hex(&content);
    if !digest.eq_ignore_ascii_case(&args.sha256) {
        return Err(format!(
            "the content's SHA-256 is {digest}, not {}: nothing was written",
            args.sha256
        ));
    }
    let mode = match &args.mode {
        Some(mode) => {
            u32::from_str_radix(mode, 8).map_err(|_| format!("mode {mode:?} is not octal"))?
        }
        None => 0o644,
    };
    let dir = path.parent().ok_or("no directory")?;
    let name = path.file_name().ok_or("no file name")?.to_string_lossy();
    let temporary = dir.join(format!(".{name}.dirigent-{}", std::process::id()));
    let shown = |err: std::io::Error| format!("{}: {err}", path.display());
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(&content)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(err) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(shown(err));
    }
    Ok(FileWritten {
        size: content.len() as u64,
        sha256: digest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_roots_are_refused_with_their_rule() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("inside.txt"), b"hello").unwrap();
        std::fs::write(base.path().join("secret.txt"), b"no").unwrap();
        std::os::unix::fs::symlink(base.path().join("secret.txt"), root.join("leak")).unwrap();
        let roots = vec![root.clone()];
        let path = |rest: &str| format!("{}/{rest}", root.display());

        assert!(resolve(&roots, &path("inside.txt"), false).is_ok());
        let dotdot = resolve(&roots, &path("../secret.txt"), false).unwrap_err();
        assert!(dotdot.contains("`..`"), "{dotdot}");
        let outside = resolve(
            &roots,
            &base.path().join("secret.txt").display().to_string(),
            false,
        )
        .unwrap_err();
        assert!(
            outside.contains("outside this agent's file roots"),
            "{outside}"
        );
        let link = resolve(&roots, &path("leak"), false).unwrap_err();
        assert!(link.contains("a symlink leads to"), "{link}");
        let write_link = resolve(&roots, &path("leak"), true).unwrap_err();
        assert!(
            write_link.contains("not written through symlinks"),
            "{write_link}"
        );
        assert!(
            resolve(&roots, "relative/path", false)
                .unwrap_err()
                .contains("absolute")
        );
        assert!(
            resolve(&[], &path("inside.txt"), false)
                .unwrap_err()
                .contains("no file roots")
        );
    }

    #[test]
    fn a_write_checks_its_digest_and_a_read_gives_it_back() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("out.bin");
        let content = b"robot data\n".repeat(100);
        let encoded = base64::engine::general_purpose::STANDARD.encode(&content);
        let wrong = WriteArgs {
            path: target.display().to_string(),
            content_base64: encoded.clone(),
            sha256: "0".repeat(64),
            mode: None,
        };
        assert!(
            write(&target, &wrong)
                .unwrap_err()
                .contains("nothing was written")
        );
        assert!(!target.exists());
        let right = WriteArgs {
            sha256: sha256_hex(&content),
            ..wrong
        };
        let written = write(&target, &right).unwrap();
        assert_eq!(written.size, content.len() as u64);
        let read_back = read(
            &target,
            &ReadArgs {
                path: right.path.clone(),
                offset: 0,
                length: None,
            },
        )
        .unwrap();
        assert_eq!(read_back.sha256, written.sha256);
        assert_eq!(read_back.content_base64, encoded);
        let part = read(
            &target,
            &ReadArgs {
                path: right.path,
                offset: 5,
                length: Some(4),
            },
        )
        .unwrap();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(part.content_base64)
                .unwrap(),
            b" dat"
        );
    }
}
