//! `expose.hosts_file`: a managed block in a hosts file (e.g. `/etc/hosts`) with one
//! `IP service.namespace` line per exposed endpoint, so in-cluster names resolve locally.
//!
//! Everything outside the block stays byte for byte. The file is rewritten only when the block's
//! content changes, atomically (a temporary file in the same directory, renamed over it) and with
//! its mode kept; where the rename cannot work (a bind-mounted `/etc/hosts` in a container:
//! `EBUSY`, `EXDEV`) the file is rewritten in place, in an order that never leaves it short of
//! its old text when a write fails (see [`rewrite_in_place`]). Failures are reported, never
//! fatal.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::Placement;

pub const BEGIN: &str = "# BEGIN bindgate (managed, do not edit)";
pub const END: &str = "# END bindgate";

/// The block's lines: `(service.namespace, IP)`, sorted by name.
pub type Entries = BTreeSet<(String, IpAddr)>;

/// The names to publish for `placements`. A wildcard listen address is reached through loopback.
pub fn entries(placements: &[Placement]) -> Entries {
    placements
        .iter()
        .map(|p| {
            let ip = match p.address.ip() {
                IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
                ip => ip,
            };
            (p.url.host.clone(), ip)
        })
        .collect()
}

/// `existing` with its block replaced by one for `entries` (appended when there is none, removed
/// when `entries` is empty); `None` when that is what `existing` already says.
pub fn render(existing: &[u8], entries: &Entries) -> Result<Option<Vec<u8>>, String> {
    let mut block = Vec::new();
    if !entries.is_empty() {
        block.extend_from_slice(BEGIN.as_bytes());
        block.push(b'\n');
        for (name, ip) in entries {
            block.extend_from_slice(format!("{ip} {name}\n").as_bytes());
        }
        block.extend_from_slice(END.as_bytes());
        block.push(b'\n');
    }
    let mut begin = None;
    let mut end = None;
    let mut offset = 0;
    for line in existing.split_inclusive(|b| *b == b'\n') {
        let text = line.strip_suffix(b"\n").unwrap_or(line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        match begin {
            None if text == BEGIN.as_bytes() => begin = Some(offset),
            Some(_) if text == END.as_bytes() => {
                end = Some(offset + line.len());
                break;
            }
            _ => {}
        }
        offset += line.len();
    }
    let mut out = Vec::with_capacity(existing.len() + block.len() + 1);
    match (begin, end) {
        (Some(b), Some(e)) => {
            out.extend_from_slice(&existing[..b]);
            out.extend_from_slice(&block);
            out.extend_from_slice(&existing[e..]);
        }
        (Some(_), None) => {
            return Err(format!(
                "it has a `{BEGIN}` line without a matching `{END}` line; fix or remove the block by hand"
            ));
        }
        (None, _) => {
            out.extend_from_slice(existing);
            if !block.is_empty() && !existing.is_empty() && !existing.ends_with(b"\n") {
                out.push(b'\n');
            }
            out.extend_from_slice(&block);
        }
    }
    Ok((out != existing).then_some(out))
}

/// Keeps one hosts file's block up to date, reporting each distinct failure once.
#[derive(Debug, Default)]
pub struct HostsFile {
    last_error: Option<String>,
}

impl HostsFile {
    /// Whether the last write failed (the control plane retries on every later poll).
    pub fn failing(&self) -> bool {
        self.last_error.is_some()
    }

    /// Brings `path`'s block in line with `entries`. Never fails: a problem is a warning (logged
    /// once until it changes or clears) and serving goes on.
    pub fn sync(&mut self, path: &Path, entries: &Entries) {
        match update(path, entries) {
            Ok(changed) => {
                if changed {
                    tracing::info!(path = %path.display(), names = entries.len(), "hosts file updated");
                }
                if self.last_error.take().is_some() {
                    tracing::info!(path = %path.display(), "hosts file writable again");
                }
            }
            Err(e) => {
                if self.last_error.as_ref() != Some(&e) {
                    tracing::warn!(
                        "cannot update the hosts file {}: {e}; endpoints are still served, but their names may not resolve",
                        path.display()
                    );
                    self.last_error = Some(e);
                }
            }
        }
    }
}

/// Rewrites the file when its block differs; returns whether it wrote.
pub fn update(path: &Path, entries: &Entries) -> Result<bool, String> {
    // Write through a symlink (some systems link /etc/hosts elsewhere) rather than replace it.
    let path = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_owned(),
        Err(e) => return Err(e.to_string()),
    };
    let (existing, mode) = match crate::config::read_document(&path) {
        Ok(bytes) => {
            let mode = std::fs::metadata(&path)
                .map_err(|e| e.to_string())?
                .permissions()
                .mode();
            (bytes, mode & 0o7777)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), 0o644),
        Err(e) => return Err(format!("reading it: {e}")),
    };
    let Some(new) = render(&existing, entries)? else {
        return Ok(false);
    };
    write(&path, &existing, &new, mode)?;
    Ok(true)
}

fn write(path: &Path, old: &[u8], bytes: &[u8], mode: u32) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A fresh name nobody can guess, created exclusively: in a directory others can write to
    // (`hosts_file: /tmp/hosts`), a link planted at a predictable name would have had this
    // process truncate and overwrite whatever the link points at.
    let tmp: PathBuf = dir.join(format!(
        ".{name}.bindgate-{:016x}.tmp",
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("writing {}: {e}", tmp.display()));
    }
    match std::fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EXDEV)) => {
            let _ = std::fs::remove_file(&tmp);
            // The file is a mount point (or on another device): rewrite it where it is.
            let rewrite = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|mut f| rewrite_in_place(&mut f, old, bytes));
            rewrite.map_err(|e| format!("rewriting it in place: {e}"))
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(format!("replacing it: {e}"))
        }
    }
}

/// A file rewritten where it is: positioned writes, a length, a flush to the disk.
trait InPlace {
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()>;
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
    fn sync(&mut self) -> std::io::Result<()>;
}

impl InPlace for std::fs::File {
    fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, bytes, offset)
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_all()
    }
}

/// Turns `file`, which holds `old`, into `new` where it is, such that a failed write (a full
/// disk, a quota, a file-size limit) leaves `old` whole:
/// - a longer text first grows the file by its tail, past `old`'s end, and flushes it; when
///   that fails the file is cut back to `old`'s length, untouched;
/// - only then are the bytes that differ overwritten, inside blocks `old` already holds, so no
///   new space is needed; should that still fail (an I/O error), `old`'s bytes are put back;
/// - a shorter text is cut to its length last.
///
/// Readers in between may see a mix of the two (as with any in-place rewrite); never a file
/// emptied or cut short, which a truncate-then-write leaves behind on a full disk.
fn rewrite_in_place(file: &mut impl InPlace, old: &[u8], new: &[u8]) -> std::io::Result<()> {
    let old_len = old.len() as u64;
    if new.len() > old.len() {
        let grown = file
            .write_at(&new[old.len()..], old_len)
            .and_then(|()| file.sync());
        if let Err(e) = grown {
            let _ = file.set_len(old_len);
            return Err(e);
        }
    }
    let overlap = new.len().min(old.len());
    let same = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    if same < overlap {
        if let Err(e) = file.write_at(&new[same..overlap], same as u64) {
            let _ = file.write_at(&old[same..], same as u64);
            let _ = file.set_len(old_len);
            return Err(e);
        }
    }
    if new.len() < old.len() {
        file.set_len(new.len() as u64)?;
    }
    file.sync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(pairs: &[(&str, &str)]) -> Entries {
        pairs
            .iter()
            .map(|(n, ip)| (n.to_string(), ip.parse().unwrap()))
            .collect()
    }

    fn render_str(existing: &str, entries: &Entries) -> Option<String> {
        render(existing.as_bytes(), entries)
            .unwrap()
            .map(|b| String::from_utf8(b).unwrap())
    }

    const BLOCK: &str = "# BEGIN bindgate (managed, do not edit)\n127.77.0.2 a.ns\n127.77.0.1 b.ns\n# END bindgate\n";

    #[test]
    fn block_is_appended_replaced_and_removed_keeping_the_rest() {
        let two = e(&[("b.ns", "127.77.0.1"), ("a.ns", "127.77.0.2")]);
        let user = "127.0.0.1 localhost\n# mine\r\n::1 ip6-localhost";
        let with = render_str(user, &two).unwrap();
        assert_eq!(with, format!("{user}\n{BLOCK}"), "sorted by name");
        assert_eq!(render_str(&with, &two), None, "unchanged: no rewrite");

        // Lines after the block, and a changed block, in the middle of the file.
        let middle = format!("top\n{BLOCK}bottom\n");
        let one = e(&[("a.ns", "127.77.0.9")]);
        assert_eq!(
            render_str(&middle, &one).unwrap(),
            "top\n# BEGIN bindgate (managed, do not edit)\n127.77.0.9 a.ns\n# END bindgate\nbottom\n"
        );
        assert_eq!(
            render_str(&middle, &Entries::new()).unwrap(),
            "top\nbottom\n"
        );
        assert_eq!(render_str("", &Entries::new()), None);
        assert_eq!(render_str("x", &Entries::new()), None);
        assert_eq!(render_str("", &one).unwrap().lines().count(), 3);
    }

    #[test]
    fn an_unterminated_block_is_left_alone() {
        let text = "a\n# BEGIN bindgate (managed, do not edit)\n1.2.3.4 x.y\n";
        let err = render(text.as_bytes(), &e(&[("a.ns", "127.0.0.1")])).unwrap_err();
        assert!(err.contains("without a matching `# END bindgate`"), "{err}");
    }

    #[test]
    fn update_writes_atomically_keeping_mode_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let two = e(&[("b.ns", "127.77.0.1"), ("a.ns", "127.77.0.2")]);
        assert!(update(&path, &two).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("127.0.0.1 localhost\n{BLOCK}")
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o640);
        assert!(!update(&path, &two).unwrap(), "same block: not rewritten");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["hosts"], "no temporary file left behind");

        // Through a symlink: the target changes, the link stays a link.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(update(&link, &Entries::new()).unwrap());
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n"
        );

        let missing_dir = dir.path().join("nope/hosts");
        assert!(update(&missing_dir, &two).is_err());
    }

    /// A file on a disk with room for `room` bytes: a write past it stores what fits and fails
    /// as a full disk does; `broken_at` makes the write that reaches that offset fail there with
    /// an I/O error, wherever the room is.
    struct Disk {
        bytes: Vec<u8>,
        room: usize,
        broken_at: Option<usize>,
    }

    impl InPlace for Disk {
        fn write_at(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
            let offset = offset as usize;
            let end = offset + bytes.len();
            let (stop, error) = match self.broken_at.filter(|b| (offset..end).contains(b)) {
                Some(b) => (b, std::io::Error::other("I/O error")),
                None if end > self.room => (
                    self.room.max(offset),
                    std::io::Error::from_raw_os_error(libc::ENOSPC),
                ),
                None => (end, std::io::Error::other("unused")),
            };
            if self.bytes.len() < stop {
                self.bytes.resize(stop, 0);
            }
            self.bytes[offset..stop].copy_from_slice(&bytes[..stop - offset]);
            if stop < end {
                self.broken_at = None; // a failing sector is remapped: the rewrite of old succeeds
                return Err(error);
            }
            Ok(())
        }

        fn set_len(&mut self, len: u64) -> std::io::Result<()> {
            self.bytes.resize(len as usize, 0);
            Ok(())
        }

        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Pairs of texts the rewrite goes between: a block appended, grown in the middle, shrunk,
    /// removed, changed at the same length.
    fn rewrites() -> Vec<(String, String)> {
        let user = "127.0.0.1 localhost\n::1 ip6-localhost\n";
        let one = e(&[("a.ns", "127.77.0.9")]);
        let two = e(&[("b.ns", "127.77.0.1"), ("a.ns", "127.77.0.2")]);
        let twin = e(&[("b.ns", "127.77.0.3"), ("a.ns", "127.77.0.4")]);
        let with = |entries: &Entries, text: &str| render_str(text, entries).unwrap();
        let middle = format!("{}# after\n", with(&one, user));
        vec![
            (user.to_owned(), with(&two, user)),
            (middle.clone(), with(&two, &middle)),
            (with(&two, user), with(&one, user)),
            (with(&two, user), user.to_owned()),
            (with(&two, user), with(&twin, user)),
        ]
    }

    #[test]
    fn a_rewrite_in_place_that_runs_out_of_disk_leaves_the_old_text_whole() {
        for (old, new) in rewrites() {
            let (old, new) = (old.as_bytes(), new.as_bytes());
            // Every amount of room from none past the old text's to just short of the new one's.
            for room in old.len()..new.len() {
                let mut disk = Disk {
                    bytes: old.to_vec(),
                    room,
                    broken_at: None,
                };
                let err = rewrite_in_place(&mut disk, old, new).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
                assert_eq!(
                    String::from_utf8_lossy(&disk.bytes),
                    String::from_utf8_lossy(old),
                    "room for {room} bytes"
                );
            }
            let mut disk = Disk {
                bytes: old.to_vec(),
                room: new.len().max(old.len()),
                broken_at: None,
            };
            rewrite_in_place(&mut disk, old, new).unwrap();
            assert_eq!(disk.bytes, new);
        }
    }

    #[test]
    fn a_rewrite_in_place_that_fails_midway_puts_the_old_text_back() {
        for (old, new) in rewrites() {
            let (old, new) = (old.as_bytes(), new.as_bytes());
            let same = old.iter().zip(new).take_while(|(a, b)| a == b).count();
            for broken_at in same..new.len().min(old.len()) {
                let mut disk = Disk {
                    bytes: old.to_vec(),
                    room: usize::MAX,
                    broken_at: Some(broken_at),
                };
                assert!(rewrite_in_place(&mut disk, old, new).is_err());
                assert_eq!(disk.bytes, old, "broken at byte {broken_at}");
            }
        }
    }

    #[test]
    fn a_rewrite_in_place_on_a_real_file_keeps_its_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        for (old, new) in rewrites() {
            std::fs::write(&path, &old).unwrap();
            let inode = std::fs::metadata(&path).unwrap().ino();
            let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            rewrite_in_place(&mut f, old.as_bytes(), new.as_bytes()).unwrap();
            assert_eq!(std::fs::read_to_string(&path).unwrap(), new);
            assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        }
    }

    /// A hosts file in a directory others can write to: a link planted where the temporary
    /// file used to go (`.hosts.bindgate-<pid>.tmp`) made the rewrite truncate and overwrite
    /// the file it points at. The temporary file now has a random name, created exclusively.
    #[test]
    fn a_link_planted_in_the_hosts_files_directory_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let planted = dir
            .path()
            .join(format!(".hosts.bindgate-{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let entries = e(&[("a.ns", "127.77.0.9")]);
        assert_eq!(update(&path, &entries), Ok(true));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(
            std::fs::read_to_string(&path)
                .unwrap()
                .contains("127.77.0.9 a.ns\n")
        );
        // Only the planted link is left beside the file: no temporary file of ours.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let link = planted.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(names, [link, "hosts".to_owned(), "victim".to_owned()]);
    }

    #[test]
    fn wildcard_addresses_publish_loopback() {
        let url = crate::snapshot::BoundUrl::parse("tcp://a.ns:1", None).unwrap();
        let p = [
            Placement::own(&url, "0.0.0.0:1".parse().unwrap()),
            Placement::own(&url, "[::]:2".parse().unwrap()),
        ];
        assert_eq!(entries(&p), e(&[("a.ns", "127.0.0.1"), ("a.ns", "::1")]));
    }
}
