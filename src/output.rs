//! What the CLI prints. Everything a server or an agent wrote (ids, labels, reasons, messages)
//! goes through [`clean`] before it reaches the terminal.
//!
//! One shape for machines: with `--json`, a command prints one JSON object (a list sits under a
//! plural key, `{"agents": [...]}`, with `next_page_token` when it is paged); a stream (`watch`,
//! `job watch`, `job start --follow`) prints one object per line. Times in JSON are Unix
//! milliseconds, as in the API; in human output they are RFC 3339 with the age ([`time`]).

/// `text` with control characters and bidirectional overrides escaped (an escape sequence in a
/// label cannot drive the terminal, a newline cannot fake a row) and cut at 4096 characters.
pub fn clean(text: &str) -> String {
    croupier_proto::limits::excerpt(text, 4096)
}

/// Renders rows under headers, columns padded to their widest cell; cells are [`clean`]ed.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| clean(c)).collect())
        .collect();
    let rows = rows.as_slice();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// "3s ago" style age of a Unix-millisecond timestamp.
pub fn age(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let now = croupier_registry::model::now_ms();
    let secs = ((now - ms).max(0) / 1000) as u64;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// A Unix-millisecond timestamp for people: RFC 3339 (UTC, seconds) and its age,
/// `2026-12-02T09:10:19Z (3s ago)`; `-` for none.
pub fn time(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return "-".into();
    };
    if ms == 0 {
        return "-".into();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    format!(
        "{} ({})",
        humantime::format_rfc3339_seconds(at),
        age(ms as i64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_drive_a_terminal() {
        let t = table(&["LABELS"], &[vec!["zone=\u{1b}[2Jeu\nfake row".into()]]);
        assert_eq!(t, "LABELS\nzone=\\u{1b}[2Jeu\\nfake row\n");
    }

    #[test]
    fn times_are_rfc3339_with_their_age() {
        assert_eq!(time(0), "-");
        assert_eq!(time(-5), "-");
        let t = time(1_764_667_819_000);
        assert!(t.starts_with("2025-12-02T09:30:19Z ("), "{t}");
        assert!(t.ends_with("ago)"), "{t}");
    }

    #[test]
    fn pads_columns() {
        let t = table(&["ID", "STATE"], &[vec!["agent-1".into(), "normal".into()]]);
        assert_eq!(t, "ID       STATE\nagent-1  normal\n");
    }
}
