//! Pruning: which snapshots a policy keeps, and removing every chunk that
//! no kept snapshot uses (packs with only dead chunks are deleted; packs
//! with some are rewritten with the live ones first, then deleted).

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

use super::BackupError;
use super::manifest::Manifest;
use super::repo::{Id, PackCache, Repo, parse_id};

/// How many snapshots to keep: the `keep_last` newest, and the newest of
/// each of the `keep_daily` most recent days that have one (UTC).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Policy {
    pub keep_last: u32,
    pub keep_daily: u32,
}

#[derive(Debug, Serialize)]
pub struct PruneReport {
    pub kept: Vec<String>,
    pub removed: Vec<String>,
    pub packs_deleted: u64,
    pub packs_rewritten: u64,
    pub chunks_removed: u64,
    pub bytes_freed: u64,
}

/// The ids `policy` keeps, of `ids` sorted oldest first (ids start with
/// their UTC date).
pub fn keep(ids: &[String], policy: Policy) -> BTreeSet<String> {
    let mut kept: BTreeSet<String> = ids
        .iter()
        .rev()
        .take(policy.keep_last as usize)
        .cloned()
        .collect();
    let mut days = BTreeSet::new();
    for id in ids.iter().rev() {
        if days.len() >= policy.keep_daily as usize {
            break;
        }
        if days.insert(id[..8].to_owned()) {
            kept.insert(id.clone());
        }
    }
    kept
}

pub fn prune(
    repo: &mut Repo,
    policy: Policy,
    verifier_key: &str,
) -> Result<PruneReport, BackupError> {
    if policy.keep_last == 0 && policy.keep_daily == 0 {
        return Err(BackupError::Invalid(
            "a policy that keeps no snapshot would empty the repository; keep at least one".into(),
        ));
    }
    let ids = repo.snapshot_ids()?;
    let kept = keep(&ids, policy);
    // Security invariant: packs with no snapshot to keep them is a repository that cannot be read, not garbage.
    if kept.is_empty() && !repo.packs()?.is_empty() {
        return Err(BackupError::Damaged(
            "the repository holds packs but no snapshot manifest; nothing was deleted".into(),
        ));
    }
    // Read every kept manifest first: a damaged one stops the prune before
    // anything is deleted, so its chunks are never taken for garbage.
    let mut live_chunks: HashSet<Id> = HashSet::new();
    let mut live_lists: HashSet<Id> = HashSet::new();
    for id in &kept {
        let m = Manifest::open(id, &repo.read_snapshot_note(id)?, verifier_key)?;
        for f in &m.files {
            let list = parse_id(&f.list)
                .ok_or_else(|| BackupError::Damaged(format!("{id}: malformed list id")))?;
            live_chunks.extend(repo.read_list(&list)?);
            live_lists.insert(list);
        }
    }
    let mut removed = Vec::new();
    for id in ids.iter().filter(|i| !kept.contains(*i)) {
        repo.remove_snapshot(id)?;
        removed.push(id.clone());
    }
    let mut report = PruneReport {
        kept: kept.into_iter().collect(),
        removed,
        packs_deleted: 0,
        packs_rewritten: 0,
        chunks_removed: 0,
        bytes_freed: 0,
    };
    for list in repo.list_ids()? {
        if !live_lists.contains(&list) {
            repo.remove_list(&list)?;
        }
    }
    let mut packs = PackCache::default();
    for pack in repo.packs()? {
        let entries = repo.pack_index(&pack)?;
        let dead = entries
            .iter()
            .filter(|(id, _)| !live_chunks.contains(id))
            .count();
        if dead == 0 {
            continue;
        }
        report.chunks_removed += dead as u64;
        if dead < entries.len() {
            // Copy the live chunks into new packs (durable) before the old
            // pack goes, so a crash in between loses nothing.
            let mut live = Vec::new();
            for (id, _) in entries.iter().filter(|(id, _)| live_chunks.contains(id)) {
                live.push((*id, repo.read_chunk(id, &mut packs)?));
            }
            repo.forget_pack(&pack);
            for (id, bytes) in live {
                repo.add_chunk(id, &bytes)?;
            }
            repo.flush()?;
            report.packs_rewritten += 1;
        } else {
            report.packs_deleted += 1;
        }
        report.bytes_freed += repo.remove_pack(&pack)?;
    }
    for orphan in repo.orphan_packs() {
        report.bytes_freed += std::fs::metadata(&orphan).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&orphan);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(day: u32, n: u32) -> String {
        format!("202612{day:02}T{n:02}0000.000Z-0000000{}", n % 10)
    }

    #[test]
    fn the_policy_keeps_the_newest_and_one_a_day() {
        let ids: Vec<String> = (1..=3)
            .flat_map(|d| (0..4).map(move |n| id(d, n)))
            .collect();
        let k = keep(
            &ids,
            Policy {
                keep_last: 2,
                keep_daily: 3,
            },
        );
        let want: BTreeSet<String> = [id(3, 3), id(3, 2), id(2, 3), id(1, 3)].into();
        assert_eq!(k, want);
        let k = keep(
            &ids,
            Policy {
                keep_last: 1,
                keep_daily: 0,
            },
        );
        assert_eq!(k, [id(3, 3)].into());
    }
}
