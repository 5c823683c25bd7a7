//! The erasure ledger: one file per erasure, kept in the state directory
//! and in the backup repository, outside every snapshot, so a restore of a
//! snapshot taken before an erasure can re-apply it.
//!
//! ```text
//! <dir>/erasures/<firm>/<erasure id>.json   the intent, written and synced before the erasure commits
//! <dir>/erasures/<firm>/<erasure id>.done   once committed, and the peppers zeroed everywhere
//! <state>/erasures/repositories             every repository given a copy of the peppers
//! ```
//!
//! An intent names the subjects only by their keyed ids (HMAC under the
//! firm's auth key, which only the master key opens): nothing in the
//! ledger lets anyone test a guess at an identifier. Certificates, which
//! carry salted hashes, stay in the firm database.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::files::write_durably;

pub const FORMAT: &str = "strongroom-erasure-ledger/1";

/// What a ledger intent records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub format: String,
    pub id: String,
    pub firm_id: String,
    /// Keyed subject ids (HMAC under the firm's auth key, 16 bytes hex).
    pub subjects: Vec<String>,
    pub requested_at: String,
    /// Who asked (an actor label, never a subject).
    pub by: String,
}

/// A ledger entry found on disk: its intent, and whether it is done.
#[derive(Debug, Clone)]
pub struct Found {
    pub intent: Intent,
    pub done: bool,
}

fn firm_dir(root: &Path, firm: &str) -> PathBuf {
    root.join("erasures").join(firm)
}

/// Records an intent under `root` (a state directory or a repository).
pub fn write_intent(root: &Path, intent: &Intent) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(intent).map_err(std::io::Error::other)?;
    write_durably(
        &firm_dir(root, &intent.firm_id).join(format!("{}.json", intent.id)),
        &text,
    )
}

/// Marks an erasure done next to its intent.
pub fn mark_done(root: &Path, firm: &str, id: &str) -> std::io::Result<()> {
    write_durably(&firm_dir(root, firm).join(format!("{id}.done")), b"")
}

/// Withdraws an intent nothing was done for (a later write of it failed).
pub fn withdraw(root: &Path, firm: &str, id: &str) {
    let path = firm_dir(root, firm).join(format!("{id}.json"));
    if let Err(e) = fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "could not withdraw an erasure intent; it is carried out at the next start");
    }
}

/// The repositories given a copy of the peppers (`state`'s list).
pub fn repositories(state: &Path) -> Vec<PathBuf> {
    fs::read_to_string(state.join("erasures").join("repositories"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(PathBuf::from)
        .collect()
}

/// Adds `repo` to `state`'s list of repositories holding peppers.
pub fn note_repository(state: &Path, repo: &Path) -> std::io::Result<()> {
    let mut all = repositories(state);
    let repo = repo.canonicalize().unwrap_or_else(|_| repo.to_path_buf());
    if all.contains(&repo) {
        return Ok(());
    }
    all.push(repo);
    let text: String = all.iter().map(|p| format!("{}\n", p.display())).collect();
    write_durably(
        &state.join("erasures").join("repositories"),
        text.as_bytes(),
    )
}

/// Every ledger entry of `firm` under `root`, in id order (ids are
/// time-ordered). A missing directory is an empty ledger.
pub fn entries(root: &Path, firm: &str) -> std::io::Result<Vec<Found>> {
    let dir = firm_dir(root, firm);
    let mut names: Vec<String> = match fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let text = fs::read(dir.join(&n))?;
        let intent: Intent = serde_json::from_slice(&text).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", dir.join(&n).display()),
            )
        })?;
        if intent.format != FORMAT || intent.firm_id != firm || format!("{}.json", intent.id) != n {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{}: not an erasure intent of this firm",
                    dir.join(&n).display()
                ),
            ));
        }
        let done = dir.join(format!("{}.done", intent.id)).exists();
        out.push(Found { intent, done });
    }
    Ok(out)
}

/// The firms with a ledger under `root`.
pub fn firms(root: &Path) -> std::io::Result<Vec<String>> {
    match fs::read_dir(root.join("erasures")) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Copies every ledger file under `from` that `to` lacks (a state
/// directory into a repository, or a repository into a restored state
/// directory). How many files were copied.
pub fn copy_missing(from: &Path, to: &Path) -> std::io::Result<usize> {
    let mut copied = 0;
    for firm in firms(from)? {
        let src = firm_dir(from, &firm);
        let dst = firm_dir(to, &firm);
        let mut names: Vec<String> = fs::read_dir(&src)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".json") || n.ends_with(".done"))
            .collect();
        // Intents first: a done marker never stands without its intent.
        names.sort_by_key(|n| (n.ends_with(".done"), n.clone()));
        for n in names {
            if dst.join(&n).exists() {
                continue;
            }
            write_durably(&dst.join(&n), &fs::read(src.join(&n))?)?;
            copied += 1;
        }
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(id: &str) -> Intent {
        Intent {
            format: FORMAT.to_owned(),
            id: id.to_owned(),
            firm_id: "frm_a".to_owned(),
            subjects: vec!["00ff".to_owned()],
            requested_at: "2026-01-01T00:00:00Z".to_owned(),
            by: "key:k".to_owned(),
        }
    }

    #[test]
    fn intents_done_markers_copies_and_repositories() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        write_intent(&a, &intent("era_2")).unwrap();
        write_intent(&a, &intent("era_1")).unwrap();
        mark_done(&a, "frm_a", "era_1").unwrap();
        let found = entries(&a, "frm_a").unwrap();
        assert_eq!(
            found
                .iter()
                .map(|f| f.intent.id.as_str())
                .collect::<Vec<_>>(),
            ["era_1", "era_2"]
        );
        assert!(found[0].done && !found[1].done);
        note_repository(&a, &b).unwrap();
        note_repository(&a, &b).unwrap();
        assert_eq!(repositories(&a).len(), 1);
        assert_eq!(copy_missing(&a, &b).unwrap(), 3);
        assert_eq!(copy_missing(&a, &b).unwrap(), 0);
        assert_eq!(entries(&b, "frm_a").unwrap().len(), 2);
        withdraw(&a, "frm_a", "era_2");
        assert_eq!(entries(&a, "frm_a").unwrap().len(), 1);
        assert!(entries(&a, "frm_other").unwrap().is_empty());
        // An intent filed under another firm's name is refused.
        let mut wrong = intent("era_3");
        wrong.firm_id = "frm_b".to_owned();
        write_intent(&a, &wrong).unwrap();
        fs::rename(
            a.join("erasures/frm_b/era_3.json"),
            a.join("erasures/frm_a/era_3.json"),
        )
        .unwrap();
        assert!(entries(&a, "frm_a").is_err());
    }
}
