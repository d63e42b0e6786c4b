//! Counts the rows of every table in a plain-format dump as it streams past, so the
//! manifest records exactly what the dump contains (not a separate `count(*)` taken
//! at another moment, and at no extra cost to the database server).
//!
//! pg_dump writes each table's data as a `-- Data for Name: …; Type: TABLE DATA; …`
//! comment, a `COPY name (cols) FROM stdin;` line, one line per row (newlines inside
//! values are escaped in COPY text format) and a terminating `\.` line.

use std::collections::BTreeMap;

const HEAD_CAP: usize = 8192;
const TAIL_LEN: usize = 16;

/// Incremental COPY row counter; feed it the plain dump in any split.
#[derive(Debug, Default)]
pub struct RowCounter {
    head: Vec<u8>,
    tail: Vec<u8>,
    expect_copy: bool,
    table: Option<(String, u64)>,
    counts: BTreeMap<String, u64>,
}

impl RowCounter {
    /// Feeds the next bytes of the dump.
    pub fn feed(&mut self, mut data: &[u8]) {
        while let Some(i) = memchr::memchr(b'\n', data) {
            self.partial(&data[..i]);
            self.end_line();
            data = &data[i + 1..];
        }
        self.partial(data);
    }

    /// Row counts by table name as pg_dump wrote it (schema-qualified, quoted as
    /// needed, so usable in SQL as is).
    pub fn finish(self) -> BTreeMap<String, u64> {
        self.counts
    }

    fn partial(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.table.is_some() {
            // Data rows: only "\." matters, so keep at most three bytes.
            let room = 3usize.saturating_sub(self.head.len());
            self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
            return;
        }
        let room = HEAD_CAP.saturating_sub(self.head.len());
        self.head.extend_from_slice(&bytes[..room.min(bytes.len())]);
        self.tail
            .extend_from_slice(&bytes[bytes.len().saturating_sub(TAIL_LEN)..]);
        let excess = self.tail.len().saturating_sub(TAIL_LEN);
        self.tail.drain(..excess);
    }

    fn end_line(&mut self) {
        let line = std::mem::take(&mut self.head);
        let tail = std::mem::take(&mut self.tail);
        if let Some((name, count)) = &mut self.table {
            if line == b"\\." {
                let (name, count) = (std::mem::take(name), *count);
                *self.counts.entry(name).or_default() += count;
                self.table = None;
            } else {
                *count += 1;
            }
        } else if line.starts_with(b"-- Data for Name: ") && contains(&line, b"; Type: TABLE DATA;")
        {
            self.expect_copy = true;
        } else if self.expect_copy && line.starts_with(b"COPY ") && tail.ends_with(b" FROM stdin;")
        {
            self.expect_copy = false;
            if let Some(name) = table_name(&line[5..]) {
                self.table = Some((name, 0));
            }
        } else if !line.is_empty() && !line.starts_with(b"--") {
            self.expect_copy = false;
        }
        self.head = line;
        self.head.clear();
        self.tail = tail;
        self.tail.clear();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(haystack, needle).is_some()
}

/// The (possibly quoted) qualified name at the start of `rest`, up to the first
/// space outside double quotes.
fn table_name(rest: &[u8]) -> Option<String> {
    let mut quoted = false;
    let end = rest
        .iter()
        .position(|&b| {
            if b == b'"' {
                quoted = !quoted;
            }
            b == b' ' && !quoted
        })
        .unwrap_or(rest.len());
    (end > 0).then(|| String::from_utf8_lossy(&rest[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "--\n-- Name: t; Type: TABLE; Schema: public\n--\n\nCREATE TABLE public.t (a int);\n\n\
--\n-- Data for Name: t; Type: TABLE DATA; Schema: public; Owner: postgres\n--\n\n\
COPY public.t (a) FROM stdin;\n1\n2\n3\n\\.\n\n\
--\n-- Data for Name: Odd Name; Type: TABLE DATA; Schema: My Schema; Owner: postgres\n--\n\n\
COPY \"My Schema\".\"Odd Name\" (\"x y\") FROM stdin;\na\\nb\n\\\\.\n\\.\n\n\
--\n-- Data for Name: empty; Type: TABLE DATA; Schema: public; Owner: postgres\n--\n\n\
COPY public.empty (a) FROM stdin;\n\\.\n\n\
CREATE FUNCTION f() RETURNS void AS $$\nCOPY public.t (a) FROM stdin;\n$$ LANGUAGE sql;\n";

    fn expected() -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("public.t".to_owned(), 3),
            ("\"My Schema\".\"Odd Name\"".to_owned(), 2),
            ("public.empty".to_owned(), 0),
        ])
    }

    #[test]
    fn counts_rows_per_table_in_any_split() {
        let bytes = DUMP.as_bytes();
        for step in [1, 2, 3, 5, 7, 64, bytes.len()] {
            let mut counter = RowCounter::default();
            for piece in bytes.chunks(step) {
                counter.feed(piece);
            }
            assert_eq!(counter.finish(), expected(), "split every {step} bytes");
        }
    }

    #[test]
    fn copy_inside_a_function_body_is_not_data() {
        let mut counter = RowCounter::default();
        counter.feed(b"CREATE FUNCTION f() AS $$\nCOPY public.t (a) FROM stdin;\n1\n$$;\n");
        assert!(counter.finish().is_empty());
    }
}
