//! The hash chain of an audit log: how a line is sealed, how a chain is verified, and how a
//! server's files are found and read.
//!
//! A line is one JSON object whose last field is `"hash"`: the SHA-256 (hex) of the line's text
//! without that field (the object closed right after the field before it). Among the other fields,
//! `seq` counts records from 1 along the chain and `prev` holds the hash of the previous record
//! ([`GENESIS`] for the first one). Rotation does not restart the chain: the first line of a new
//! file carries on from the last line of the rotated one, so a set of files verifies as one
//! chain, and a single rotated file verifies on its own (only its first `prev` is unchecked).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// `prev` of the first record of a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_FIELD: &str = ",\"hash\":\"";

/// Seals a record body (a JSON object without `hash`): returns the line and its hash.
pub fn seal(body: &str) -> (String, String) {
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    let open = body.strip_suffix('}').unwrap_or(body);
    (format!("{open}{HASH_FIELD}{hash}\"}}"), hash)
}

/// Splits a sealed line into its body and the hash it claims; None when it is not sealed.
fn unseal(line: &str) -> Option<(String, &str)> {
    let at = line.rfind(HASH_FIELD)?;
    let claimed = line[at + HASH_FIELD.len()..].strip_suffix("\"}")?;
    if claimed.len() != 64 || !claimed.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((format!("{}}}", &line[..at]), claimed))
}

/// The position of the last record of a chain: its seq and hash.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Head {
    /// Seq of the record (0: an empty chain).
    pub seq: u64,
    /// Its hash ([`GENESIS`] for an empty chain).
    pub hash: String,
}

impl Head {
    /// The head of an empty chain.
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: GENESIS.into(),
        }
    }
}

/// What a verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// Records checked.
    pub records: u64,
    /// Seq of the first record (1 unless older files were rotated away).
    pub first_seq: u64,
    /// The last record.
    pub head: Head,
}

/// The first bad record of a chain, and why it is bad.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {why}")]
pub struct Broken {
    /// The file.
    pub file: String,
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong, naming the record.
    pub why: String,
}

/// Verifies the chain of `files`, oldest first. With `checkpoint` (the head a server stored), the
/// chain must hold that record with that hash: a chain that ends before it lost its tail.
pub fn verify(files: &[PathBuf], checkpoint: Option<&Head>) -> Result<Verified, Broken> {
    let mut prev: Option<(u64, String)> = None;
    let mut first_seq = 0;
    let mut records = 0;
    let mut checkpoint_seen = false;
    let mut last_place = (String::new(), 0);
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| Broken {
            file: name.clone(),
            line: 0,
            why: format!("cannot be read: {e}"),
        })?;
        for (i, line) in text.lines().enumerate() {
            let bad = |why: String| Broken {
                file: name.clone(),
                line: i + 1,
                why,
            };
            if line.is_empty() {
                return Err(bad("an empty line: a record was removed or cut".into()));
            }
            let (body, claimed) = unseal(line).ok_or_else(|| {
                bad("not a sealed audit record (no trailing \"hash\" field)".into())
            })?;
            let fields: serde_json::Value =
                serde_json::from_str(&body).map_err(|e| bad(format!("not a JSON record: {e}")))?;
            let seq = fields["seq"].as_u64().unwrap_or(0);
            let claimed_prev = fields["prev"].as_str().unwrap_or_default();
            let hash = hex::encode(Sha256::digest(body.as_bytes()));
            if hash != claimed {
                return Err(bad(format!(
                    "record seq {seq} was modified: its content does not match its hash"
                )));
            }
            match &prev {
                None => {
                    first_seq = seq;
                    if seq == 1 && claimed_prev != GENESIS {
                        return Err(bad("record seq 1 does not start a chain".into()));
                    }
                }
                Some((prev_seq, prev_hash)) => {
                    if claimed_prev != prev_hash {
                        return Err(bad(format!(
                            "record seq {seq} does not follow record seq {prev_seq}: a record \
                             between them was removed, or records were reordered or replaced"
                        )));
                    }
                    if seq != prev_seq + 1 {
                        return Err(bad(format!(
                            "record seq {seq} follows seq {prev_seq}: the sequence skips"
                        )));
                    }
                }
            }
            if let Some(c) = checkpoint
                && c.seq == seq
            {
                if c.hash != hash {
                    return Err(bad(format!(
                        "record seq {seq} is not the one the server checkpointed: the log was \
                         rewritten from here"
                    )));
                }
                checkpoint_seen = true;
            }
            records += 1;
            prev = Some((seq, hash));
            last_place = (name.clone(), i + 1);
        }
    }
    let head = prev.map_or_else(Head::genesis, |(seq, hash)| Head { seq, hash });
    if let Some(c) = checkpoint
        && !checkpoint_seen
        && c.seq > head.seq
    {
        return Err(Broken {
            file: last_place.0,
            line: last_place.1,
            why: format!(
                "the log ends at record seq {} but the server checkpointed seq {}: records \
                 were removed from the end",
                head.seq, c.seq
            ),
        });
    }
    Ok(Verified {
        records,
        first_seq,
        head,
    })
}

/// The files of the log at `path`, oldest first: `path.N` … `path.1`, then `path`.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return vec![path.to_path_buf()];
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let file = e.file_name().to_string_lossy().to_string();
            if let Some(n) = file
                .strip_prefix(&prefix)
                .and_then(|n| n.parse::<u64>().ok())
            {
                rotated.push((n, e.path()));
            }
        }
    }
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// The head of the log at `path` (its last sealed line, looking into the rotated file when the
/// current one is empty), or the genesis head.
pub fn read_head(path: &Path) -> Head {
    for file in log_files(path).iter().rev() {
        // Only regular files: a device (a test's /dev/full) has no chain to carry on.
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if let Some(line) = text.lines().rev().find(|l| !l.is_empty())
            && let Some((body, hash)) = unseal(line)
        {
            let seq = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .unwrap_or(0);
            return Head {
                seq,
                hash: hash.to_string(),
            };
        }
    }
    Head::genesis()
}

/// A filter of [`list`].
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// The actor or the identity acted for contains this.
    pub who: String,
    /// The target contains this.
    pub target: String,
    /// The action equals this.
    pub action: String,
    /// At or after, Unix milliseconds.
    pub since: i64,
    /// The outcome starts with this.
    pub outcome: String,
}

impl Filter {
    fn matches(&self, rec: &serde_json::Value) -> bool {
        let text = |k: &str| rec[k].as_str().unwrap_or_default();
        (self.who.is_empty()
            || text("who").contains(&self.who)
            || text("on_behalf_of").contains(&self.who))
            && (self.target.is_empty() || text("target").contains(&self.target))
            && (self.action.is_empty() || text("action") == self.action)
            && rec["at"].as_i64().unwrap_or(0) >= self.since
            && (self.outcome.is_empty() || text("outcome").starts_with(&self.outcome))
    }
}

/// The records of the log at `path` that match `filter`, newest first, at most `limit`; and
/// whether more matched.
pub fn list(path: &Path, filter: &Filter, limit: usize) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    for file in log_files(path).iter().rev() {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().rev() {
            let Ok(rec) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if !filter.matches(&rec) {
                continue;
            }
            if out.len() == limit {
                return (out, true);
            }
            out.push(line.to_string());
        }
    }
    (out, false)
}
