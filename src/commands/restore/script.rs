//! Reading a pg_dump plain script as it streams past: statements split at
//! their real ends (quotes, dollar quotes and comments understood), each
//! classified by its shape, and `COPY … FROM stdin` data handed on in batches of
//! whole lines without copying it.
//!
//! Nothing here trusts the `-- Name: …; Type: …` comments pg_dump writes: object
//! names inside them are chosen by database users. The restore's phases (schema,
//! data, indexes and constraints, the rest) are decided from the statements
//! themselves.
//!
//! psql meta-commands are never run. The only ones pg_dump writes, `\restrict`
//! and `\unrestrict` (which exist to stop psql from running injected ones), are
//! skipped; any other one is an error.

use bytes::Bytes;

mod tokens;

pub use tokens::{Tok, Token, classify, qualified_name, tokens};

/// COPY data is handed on in batches of about this many bytes (whole lines).
pub const COPY_BATCH: usize = 8 << 20;

/// The script is not one strata can restore.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScriptError {
    #[error("the dump contains the psql meta-command `{0}`, which strata does not run")]
    MetaCommand(String),
    #[error("the dump ends inside the data of {0} (truncated)")]
    EndsInCopy(String),
    #[error("the dump ends in the middle of a statement (truncated): {0}")]
    EndsInStatement(String),
    #[error(
        "the dump is not UTF-8 (made without --encoding=UTF8); restore it by hand with psql: {0}"
    )]
    NotUtf8(String),
}

/// What a statement does, as far as scheduling the restore cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `SET name …` or `SELECT pg_catalog.set_config('name', …)`: session state.
    Set {
        name: String,
    },
    /// `COPY table (…) FROM stdin`: data follows.
    Copy {
        table: String,
    },
    /// `SELECT pg_catalog.setval(…)`.
    SequenceSet,
    /// `BEGIN`, `COMMIT` and the large-object calls between them.
    LargeObjectData,
    /// `CREATE [UNIQUE] INDEX … ON [ONLY] table`.
    Index {
        table: String,
    },
    /// `ALTER TABLE [ONLY] table ADD CONSTRAINT … PRIMARY KEY | UNIQUE | EXCLUDE | CHECK`.
    Constraint {
        table: String,
    },
    /// `ALTER TABLE [ONLY] table ADD CONSTRAINT … FOREIGN KEY … REFERENCES other`.
    ForeignKey {
        table: String,
        references: String,
    },
    /// `COMMENT ON …`: belongs with the object before it.
    Comment,
    Other,
}

/// One complete SQL statement, without the comments before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub kind: Kind,
}

/// What the parser hands on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Statement(Statement),
    /// Whole lines of the current COPY's data.
    CopyData(Vec<Bytes>),
    CopyEnd,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Lex {
    Normal,
    Single { escapes: bool },
    Double,
    Dollar { tag: Vec<u8> },
    LineComment,
    Block { depth: u32 },
}

/// Incremental parser; feed it the script in pieces of any size.
#[derive(Debug)]
pub struct ScriptParser {
    /// Unconsumed statement bytes.
    cur: Vec<u8>,
    pos: usize,
    /// Where the current statement's first significant byte is.
    start: usize,
    significant: bool,
    line_start: bool,
    lex: Lex,
    /// Inside COPY data: the table.
    copy: Option<String>,
    /// A COPY data line not yet complete.
    partial: Vec<u8>,
    /// The rest of the COPY statement's line is still to be skipped.
    skip_line: bool,
    batch: Vec<Bytes>,
    batch_len: usize,
    /// Bytes fed so far.
    pub bytes: u64,
}

impl Default for ScriptParser {
    fn default() -> Self {
        Self {
            cur: Vec::new(),
            pos: 0,
            start: 0,
            significant: false,
            line_start: true,
            lex: Lex::Normal,
            copy: None,
            partial: Vec::new(),
            skip_line: false,
            batch: Vec::new(),
            batch_len: 0,
            bytes: 0,
        }
    }
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

impl ScriptParser {
    /// Feeds the next piece; events go to `out`.
    ///
    /// # Errors
    /// A psql meta-command, or a statement that is not UTF-8.
    pub fn feed(&mut self, chunk: Bytes, out: &mut Vec<Event>) -> Result<(), ScriptError> {
        self.bytes += chunk.len() as u64;
        let mut chunk = chunk;
        loop {
            if self.copy.is_some() {
                match self.copy_data(chunk, out) {
                    Some(rest) => chunk = rest,
                    None => return Ok(()),
                }
            } else {
                self.cur.extend_from_slice(&chunk);
                match self.statements(out)? {
                    Some(rest) => chunk = rest,
                    None => return Ok(()),
                }
            }
        }
    }

    /// The end of the script.
    ///
    /// # Errors
    /// The script stops inside COPY data or inside a statement.
    pub fn finish(&mut self, out: &mut Vec<Event>) -> Result<(), ScriptError> {
        if let Some(table) = &self.copy {
            if self.partial == b"\\." || self.partial == b"\\.\r" {
                self.partial.clear();
                self.flush_batch(out);
                self.copy = None;
                out.push(Event::CopyEnd);
            } else {
                return Err(ScriptError::EndsInCopy(table.clone()));
            }
        }
        if self.significant {
            let text = String::from_utf8_lossy(&self.cur[self.start..]);
            return Err(ScriptError::EndsInStatement(excerpt(&text)));
        }
        Ok(())
    }

    /// Lexes `cur` from `pos`. Returns the bytes after a `COPY … FROM stdin;`
    /// (data), or `None` when more input is needed.
    // Long on purpose: One state machine over the bytes (quotes, dollar quotes, comments, COPY data): split, its states would pass each other half a statement.
    fn statements(&mut self, out: &mut Vec<Event>) -> Result<Option<Bytes>, ScriptError> {
        loop {
            let n = self.cur.len();
            if self.pos >= n {
                break;
            }
            let b = self.cur[self.pos];
            match self.lex.clone() {
                Lex::Normal => {
                    if !self.significant {
                        if b.is_ascii_whitespace() {
                            self.line_start |= b == b'\n';
                            self.pos += 1;
                            self.start = self.pos;
                            continue;
                        }
                        if b == b'\\' && self.line_start {
                            let Some(nl) = memchr::memchr(b'\n', &self.cur[self.pos..]) else {
                                break;
                            };
                            let line = &self.cur[self.pos..self.pos + nl];
                            let line = String::from_utf8_lossy(line).trim_end().to_owned();
                            let word = line.split_whitespace().next().unwrap_or_default();
                            if word != "\\restrict" && word != "\\unrestrict" {
                                return Err(ScriptError::MetaCommand(excerpt(&line)));
                            }
                            self.pos += nl + 1;
                            self.start = self.pos;
                            continue;
                        }
                    }
                    match b {
                        b'-' | b'/' => {
                            let Some(&next) = self.cur.get(self.pos + 1) else {
                                break;
                            };
                            if b == b'-' && next == b'-' {
                                self.lex = Lex::LineComment;
                                self.pos += 2;
                                continue;
                            }
                            if b == b'/' && next == b'*' {
                                self.lex = Lex::Block { depth: 1 };
                                self.pos += 2;
                                continue;
                            }
                        }
                        b'\'' => {
                            let escapes = self.pos > self.start
                                && matches!(self.cur[self.pos - 1], b'E' | b'e')
                                && (self.pos < self.start + 2
                                    || !ident_byte(self.cur[self.pos - 2]));
                            self.lex = Lex::Single { escapes };
                        }
                        b'"' => self.lex = Lex::Double,
                        b'$' if self.pos == self.start || !ident_byte(self.cur[self.pos - 1]) => {
                            let mut j = self.pos + 1;
                            while j < n
                                && ident_byte(self.cur[j])
                                && self.cur[j] != b'$'
                                && !(j == self.pos + 1 && self.cur[j].is_ascii_digit())
                            {
                                j += 1;
                            }
                            if j == n {
                                break;
                            }
                            if self.cur[j] == b'$' {
                                self.lex = Lex::Dollar {
                                    tag: self.cur[self.pos..=j].to_vec(),
                                };
                                self.significant = true;
                                self.line_start = false;
                                self.pos = j + 1;
                                continue;
                            }
                        }
                        b';' => {
                            let end = self.pos + 1;
                            let stmt = self.take_statement(end)?;
                            let copy = match &stmt.kind {
                                Kind::Copy { table } => Some(table.clone()),
                                _ => None,
                            };
                            out.push(Event::Statement(stmt));
                            if let Some(table) = copy {
                                // The data starts on the next line.
                                let rest = self.cur.split_off(0);
                                self.pos = 0;
                                self.start = 0;
                                self.copy = Some(table);
                                self.partial.clear();
                                self.skip_line = true;
                                return Ok(Some(Bytes::from(rest)));
                            }
                            continue;
                        }
                        _ => {}
                    }
                    if !b.is_ascii_whitespace() {
                        self.significant = true;
                        self.line_start = false;
                    }
                    self.pos += 1;
                }
                Lex::Single { escapes } => {
                    let rest = &self.cur[self.pos..];
                    let hit = if escapes {
                        memchr::memchr2(b'\'', b'\\', rest)
                    } else {
                        memchr::memchr(b'\'', rest)
                    };
                    match hit {
                        None => self.pos = n,
                        Some(i) if rest[i] == b'\\' => {
                            if self.pos + i + 1 >= n {
                                self.pos += i;
                                break;
                            }
                            self.pos += i + 2;
                        }
                        Some(i) => {
                            self.pos += i + 1;
                            self.lex = Lex::Normal;
                        }
                    }
                }
                Lex::Double => match memchr::memchr(b'"', &self.cur[self.pos..]) {
                    None => self.pos = n,
                    Some(i) => {
                        self.pos += i + 1;
                        self.lex = Lex::Normal;
                    }
                },
                Lex::Dollar { tag } => {
                    match memchr::memmem::find(&self.cur[self.pos..], &tag) {
                        Some(i) => {
                            self.pos += i + tag.len();
                            self.lex = Lex::Normal;
                        }
                        None => {
                            // Keep enough for a tag split across pieces.
                            self.pos = n.saturating_sub(tag.len() - 1).max(self.pos);
                            break;
                        }
                    }
                }
                Lex::LineComment => match memchr::memchr(b'\n', &self.cur[self.pos..]) {
                    None => self.pos = n,
                    Some(i) => {
                        self.pos += i + 1;
                        self.lex = Lex::Normal;
                        if !self.significant {
                            self.line_start = true;
                            self.start = self.pos;
                        }
                    }
                },
                Lex::Block { depth } => {
                    let rest = &self.cur[self.pos..];
                    match memchr::memchr2(b'*', b'/', rest) {
                        None => self.pos = n,
                        Some(i) => {
                            let Some(&next) = rest.get(i + 1) else {
                                self.pos += i;
                                break;
                            };
                            self.pos += i + 1;
                            if rest[i] == b'*' && next == b'/' {
                                self.pos += 1;
                                self.lex = if depth == 1 {
                                    Lex::Normal
                                } else {
                                    Lex::Block { depth: depth - 1 }
                                };
                                if depth == 1 && !self.significant {
                                    self.start = self.pos;
                                }
                            } else if rest[i] == b'/' && next == b'*' {
                                self.pos += 1;
                                self.lex = Lex::Block { depth: depth + 1 };
                            }
                        }
                    }
                }
            }
        }
        if !self.significant {
            // Whitespace and comments before a statement are not kept.
            let drop = self.start.min(self.pos);
            self.cur.drain(..drop);
            self.pos -= drop;
            self.start -= drop;
        }
        Ok(None)
    }

    fn take_statement(&mut self, end: usize) -> Result<Statement, ScriptError> {
        let raw = &self.cur[self.start..end];
        let sql = std::str::from_utf8(raw)
            .map_err(|_| ScriptError::NotUtf8(excerpt(&String::from_utf8_lossy(raw))))?
            .to_owned();
        self.cur.drain(..end);
        self.pos = 0;
        self.start = 0;
        self.significant = false;
        self.line_start = false;
        let kind = classify(&sql);
        Ok(Statement { sql, kind })
    }

    /// Splits COPY data into batches of whole lines until the `\.` line.
    /// Returns what follows it, or `None` when more input is needed.
    fn copy_data(&mut self, chunk: Bytes, out: &mut Vec<Event>) -> Option<Bytes> {
        let mut data = chunk;
        if self.skip_line {
            // The data starts on the line after `COPY … FROM stdin;`.
            let i = memchr::memchr(b'\n', &data)?;
            self.skip_line = false;
            data = data.slice(i + 1..);
        }
        if !self.partial.is_empty() {
            match memchr::memchr(b'\n', &data) {
                None => {
                    self.partial.extend_from_slice(&data);
                    return None;
                }
                Some(i) => {
                    self.partial.extend_from_slice(&data[..=i]);
                    data = data.slice(i + 1..);
                    let line = std::mem::take(&mut self.partial);
                    if is_terminator(&line) {
                        return Some(self.end_copy(out, data));
                    }
                    self.push(Bytes::from(line), out);
                }
            }
        }
        let mut seg = 0;
        let mut i = 0;
        loop {
            let Some(nl) = memchr::memchr(b'\n', &data[i..]) else {
                self.push(data.slice(seg..i), out);
                self.partial = data[i..].to_vec();
                return None;
            };
            if is_terminator(&data[i..=i + nl]) {
                self.push(data.slice(seg..i), out);
                return Some(self.end_copy(out, data.slice(i + nl + 1..)));
            }
            i += nl + 1;
            if self.batch_len + (i - seg) >= COPY_BATCH {
                self.push(data.slice(seg..i), out);
                seg = i;
            }
        }
    }

    fn push(&mut self, piece: Bytes, out: &mut Vec<Event>) {
        if piece.is_empty() {
            return;
        }
        self.batch_len += piece.len();
        self.batch.push(piece);
        if self.batch_len >= COPY_BATCH {
            self.flush_batch(out);
        }
    }

    fn flush_batch(&mut self, out: &mut Vec<Event>) {
        if !self.batch.is_empty() {
            out.push(Event::CopyData(std::mem::take(&mut self.batch)));
            self.batch_len = 0;
        }
    }

    fn end_copy(&mut self, out: &mut Vec<Event>, rest: Bytes) -> Bytes {
        self.flush_batch(out);
        self.copy = None;
        out.push(Event::CopyEnd);
        self.line_start = true;
        rest
    }
}

fn is_terminator(line: &[u8]) -> bool {
    line == b"\\.\n" || line == b"\\.\r\n"
}

/// The first line of a statement, shortened, for error messages.
pub fn excerpt(sql: &str) -> String {
    let first = sql.lines().next().unwrap_or_default().trim();
    let mut out: String = first.chars().take(100).collect();
    if out.len() < first.len() || sql.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------- tokens

#[cfg(test)]
mod tests;
