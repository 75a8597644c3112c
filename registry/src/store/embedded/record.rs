//! The records of the log and how a line frames one (see the format in the
//! [module docs](super)): encoding version 2 lines, decoding versions 1 and 2, and telling a torn
//! last line (what a write cut short leaves) from damage.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::super::{KeyValue, Revision};

/// The `format` of the log's header record.
pub(super) const LOG_FORMAT: &str = "croupier-embedded-store";
/// The log format version this code writes.
pub(super) const LOG_VERSION: u32 = 2;
/// The first format: bare JSON lines, no checksums (still read; converted on open).
pub(super) const LOG_VERSION_1: u32 = 1;

/// One record of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum Record {
    /// First record of every log.
    Header { format: String, version: u32 },
    /// Second record of a rewritten log (version 2): the next `keys` records are puts holding
    /// every persisted key as of `revision`, in key order.
    Snapshot { revision: Revision, keys: u64 },
    /// A key without a lease was written.
    Put {
        key: String,
        /// Base64 (standard alphabet, padded).
        value: String,
        create_revision: Revision,
        mod_revision: Revision,
    },
    /// A persisted key was deleted (or became lease-attached, so it must not come back).
    Delete { key: String, revision: Revision },
    /// The store revision reached this value (written on a clean close).
    Revision { revision: Revision },
    /// Several puts and deletes written at once (version 2): all of them or none.
    Txn { ops: Vec<Record> },
}

impl Record {
    /// The header of a log written by this code.
    pub(super) fn header() -> Self {
        Record::Header {
            format: LOG_FORMAT.to_owned(),
            version: LOG_VERSION,
        }
    }

    /// A put of `kv`.
    pub(super) fn put(kv: &KeyValue) -> Self {
        Record::Put {
            key: kv.key.clone(),
            value: BASE64.encode(&kv.value),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
        }
    }

    /// The op name, as written.
    pub(super) fn op(&self) -> &'static str {
        match self {
            Record::Header { .. } => "header",
            Record::Snapshot { .. } => "snapshot",
            Record::Put { .. } => "put",
            Record::Delete { .. } => "delete",
            Record::Revision { .. } => "revision",
            Record::Txn { .. } => "txn",
        }
    }

    /// The highest revision the record names (0 for a header).
    pub(super) fn revision(&self) -> Revision {
        match self {
            Record::Header { .. } => 0,
            Record::Put { mod_revision, .. } => *mod_revision,
            Record::Delete { revision, .. }
            | Record::Revision { revision }
            | Record::Snapshot { revision, .. } => *revision,
            Record::Txn { ops } => ops.iter().map(Record::revision).max().unwrap_or(0),
        }
    }

    /// The keys the record writes.
    pub(super) fn keys(&self) -> Vec<String> {
        match self {
            Record::Put { key, .. } | Record::Delete { key, .. } => vec![key.clone()],
            Record::Txn { ops } => ops.iter().flat_map(Record::keys).collect(),
            _ => Vec::new(),
        }
    }
}

/// Decodes a put's value.
pub(super) fn decode_value(key: &str, value: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(value)
        .map_err(|e| format!("the value of {key:?} is not base64: {e}"))
}

/// One version 2 line: `{crc:08x} {seq} {json}\n`, the CRC-32 covering `{seq} {json}`.
pub(super) fn encode_line(seq: u64, record: &Record) -> Vec<u8> {
    let json = serde_json::to_vec(record).expect("a record always serialises");
    let mut body = Vec::with_capacity(json.len() + 24);
    body.extend_from_slice(seq.to_string().as_bytes());
    body.push(b' ');
    body.extend_from_slice(&json);
    let mut line = format!("{:08x} ", crc32fast::hash(&body)).into_bytes();
    line.extend_from_slice(&body);
    line.push(b'\n');
    line
}

/// Decodes a version 2 line (without its `\n`) into its sequence number and record.
pub(super) fn decode_v2(line: &[u8]) -> Result<(u64, Record), String> {
    let frame_error = || {
        format!(
            "not a record line (expected `<crc32 hex> <seq> <json>`, found {})",
            preview(line)
        )
    };
    if line.len() < 12 || line[8] != b' ' || !line[..8].iter().all(is_lower_hex) {
        return Err(frame_error());
    }
    let stated = std::str::from_utf8(&line[..8])
        .ok()
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .ok_or_else(frame_error)?;
    let body = &line[9..];
    let actual = crc32fast::hash(body);
    if actual != stated {
        return Err(format!(
            "checksum mismatch: the line says {stated:08x}, its content sums to {actual:08x} \
             (the line was changed after it was written)"
        ));
    }
    let space = body
        .iter()
        .position(|&b| b == b' ')
        .ok_or_else(frame_error)?;
    let seq = std::str::from_utf8(&body[..space])
        .ok()
        .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u64>().ok())
        .ok_or_else(frame_error)?;
    let record = serde_json::from_slice(&body[space + 1..])
        .map_err(|e| format!("the checksum holds but the record does not parse: {e}"))?;
    Ok((seq, record))
}

/// Decodes a version 1 line (a bare JSON record).
pub(super) fn decode_v1(line: &[u8]) -> Result<Record, String> {
    let record: Record = serde_json::from_slice(line)
        .map_err(|e| format!("not a record ({e}): {}", preview(line)))?;
    if matches!(record, Record::Snapshot { .. } | Record::Txn { .. }) {
        return Err(format!(
            "a {} record cannot appear in a version 1 log",
            record.op()
        ));
    }
    Ok(record)
}

/// Why `tail`, the unterminated bytes at the very end of a log, cannot be a write that was cut
/// short; None when it can. A cut write leaves a prefix of a line this code writes: a frame
/// (version 2) and then JSON text, which never holds a control byte or broken UTF-8 (except a
/// character cut at the very end). Zeros, random bytes and the like are damage.
pub(super) fn torn_tail_problem(version: u32, tail: &[u8]) -> Option<String> {
    let json = if version == LOG_VERSION_1 {
        tail
    } else {
        let hex = tail.len().min(8);
        if let Some(bad) = tail[..hex].iter().position(|b| !is_lower_hex(b)) {
            return Some(bad_byte(tail, bad, "a checksum digit"));
        }
        if tail.len() <= 8 {
            return None;
        }
        if tail[8] != b' ' {
            return Some(bad_byte(tail, 8, "a space"));
        }
        let digits = tail[9..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(tail.len(), |n| 9 + n);
        if digits == tail.len() {
            return None;
        }
        if digits == 9 || tail[digits] != b' ' {
            return Some(bad_byte(tail, digits, "a sequence number"));
        }
        &tail[digits + 1..]
    };
    let start = tail.len() - json.len();
    match json.first() {
        None => return None,
        Some(b'{') => {}
        Some(_) => return Some(bad_byte(tail, start, "`{`")),
    }
    if let Some(bad) = json.iter().position(|&b| b < 0x20) {
        return Some(bad_byte(tail, start + bad, "JSON text"));
    }
    if let Err(e) = std::str::from_utf8(json)
        && e.error_len().is_some()
    {
        return Some(bad_byte(tail, start + e.valid_up_to(), "UTF-8 text"));
    }
    None
}

/// What can still be read from a torn or damaged line: its sequence number, the keys it
/// names and the highest revision it names.
pub(super) fn salvage_info(line: &[u8]) -> (Option<u64>, Vec<String>, Option<Revision>) {
    let text = String::from_utf8_lossy(line);
    let seq = text
        .get(9..)
        .filter(|_| text.as_bytes().get(8) == Some(&b' '))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|digits| digits.parse().ok());
    let mut keys = Vec::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("\"key\":\"") {
        rest = &rest[at + 7..];
        let mut key = String::new();
        let mut escaped = false;
        let mut closed = false;
        for c in rest.chars() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    closed = true;
                    break;
                }
                (_, c) => {
                    escaped = false;
                    key.push(c);
                }
            }
        }
        if !closed {
            key.push('…');
        }
        keys.push(key);
    }
    let mut revision = None;
    for field in ["\"mod_revision\":", "\"revision\":"] {
        let mut rest = text.as_ref();
        while let Some(at) = rest.find(field) {
            rest = &rest[at + field.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            // Only a number followed by something is known to be whole.
            if digits.len() < rest.len()
                && let Ok(r) = digits.parse::<Revision>()
            {
                revision = revision.max(Some(r));
            }
        }
    }
    (seq, keys, revision)
}

fn is_lower_hex(b: &u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(b)
}

fn bad_byte(tail: &[u8], at: usize, expected: &str) -> String {
    format!(
        "byte {at} of the unterminated last line is {:#04x} where {expected} belongs, so it is \
         not a write cut short",
        tail[at]
    )
}

/// A short, printable view of a line for messages.
pub(super) fn preview(line: &[u8]) -> String {
    const MAX: usize = 60;
    let shown: String = String::from_utf8_lossy(&line[..line.len().min(MAX)])
        .chars()
        .map(|c| if c.is_control() { '�' } else { c })
        .collect();
    if line.len() > MAX {
        format!("{shown:?}… ({} bytes)", line.len())
    } else {
        format!("{shown:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, revision: Revision) -> Record {
        Record::Put {
            key: key.into(),
            value: BASE64.encode(b"v"),
            create_revision: revision,
            mod_revision: revision,
        }
    }

    #[test]
    fn a_line_round_trips_and_any_change_breaks_its_checksum() {
        let line = encode_line(7, &put("/a", 3));
        assert!(line.ends_with(b"\n"));
        let body = &line[..line.len() - 1];
        assert_eq!(decode_v2(body).unwrap(), (7, put("/a", 3)));
        for at in 0..body.len() {
            let mut bad = body.to_vec();
            bad[at] ^= 0x01;
            assert!(
                decode_v2(&bad).is_err(),
                "flipping byte {at} goes unnoticed"
            );
        }
    }

    #[test]
    fn every_prefix_of_a_line_is_a_torn_tail_and_zeros_or_garbage_are_not() {
        let line = encode_line(12, &put("/k/ü", 40));
        for cut in 0..line.len() - 1 {
            assert_eq!(
                torn_tail_problem(LOG_VERSION, &line[..cut]),
                None,
                "a write cut after {cut} bytes"
            );
        }
        let mut zeros = line[..30].to_vec();
        zeros.extend_from_slice(&[0; 100]);
        assert!(torn_tail_problem(LOG_VERSION, &zeros).is_some());
        assert!(torn_tail_problem(LOG_VERSION, &[0; 16]).is_some());
        assert!(torn_tail_problem(LOG_VERSION, b"\xff\xfe garbage").is_some());
        assert!(torn_tail_problem(LOG_VERSION_1, br#"{"op":"put","ke"#).is_none());
        assert!(torn_tail_problem(LOG_VERSION_1, b"\0\0\0").is_some());
    }

    #[test]
    fn salvage_info_reads_keys_and_revisions_from_a_fragment() {
        let line = encode_line(
            5,
            &Record::Txn {
                ops: vec![
                    put("/a", 8),
                    Record::Delete {
                        key: "/b".into(),
                        revision: 9,
                    },
                ],
            },
        );
        let (seq, keys, revision) = salvage_info(&line);
        assert_eq!(
            (seq, keys, revision),
            (Some(5), vec!["/a".into(), "/b".into()], Some(9))
        );
        let (seq, keys, revision) = salvage_info(&line[..50]);
        assert_eq!(seq, Some(5));
        assert_eq!(keys.len(), 1);
        assert!(keys[0].starts_with('/'), "{keys:?}");
        assert_eq!(revision, None);
    }
}
