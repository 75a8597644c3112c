//! Plain-text tables for the CLI. Everything a server or an agent wrote (ids, labels, reasons,
//! messages) goes through [`clean`] before it reaches the terminal.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_could_drive_a_terminal() {
        let t = table(&["LABELS"], &[vec!["zone=\u{1b}[2Jeu\nfake row".into()]]);
        assert_eq!(t, "LABELS\nzone=\\u{1b}[2Jeu\\nfake row\n");
    }

    #[test]
    fn pads_columns() {
        let t = table(&["ID", "STATE"], &[vec!["agent-1".into(), "normal".into()]]);
        assert_eq!(t, "ID       STATE\nagent-1  normal\n");
    }
}
