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

/// A lexical token of one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    /// An unquoted word (keyword or identifier).
    Word,
    /// A double-quoted identifier.
    Quoted,
    /// A string literal ('…', E'…', $$…$$).
    Str,
    Number,
    Punct(u8),
}

/// A token and where it is in the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub start: usize,
    pub end: usize,
}

impl Token {
    /// The token's text.
    pub fn text<'a>(&self, sql: &'a str) -> &'a str {
        &sql[self.start..self.end]
    }

    /// An unquoted word equal to `kw` (case-insensitive).
    pub fn is(&self, sql: &str, kw: &str) -> bool {
        self.tok == Tok::Word && self.text(sql).eq_ignore_ascii_case(kw)
    }

    /// A name: an unquoted word or a quoted identifier.
    pub fn is_name(&self) -> bool {
        matches!(self.tok, Tok::Word | Tok::Quoted)
    }
}

/// Splits one statement into tokens (comments and whitespace dropped).
pub fn tokens(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        let tok = match c {
            _ if c.is_ascii_whitespace() => {
                i += 1;
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |n| i + n + 1);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0;
                while i < b.len() {
                    if b[i..].starts_with(b"/*") {
                        depth += 1;
                        i += 2;
                    } else if b[i..].starts_with(b"*/") {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' => {
                let escapes = start > 0
                    && matches!(b[start - 1], b'E' | b'e')
                    && (start < 2 || !ident_byte(b[start - 2]));
                if escapes {
                    // E'…' started one byte earlier; drop the E word token.
                    out.pop();
                }
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                    } else if b[i] == b'\'' {
                        if b.get(i + 1) == Some(&b'\'') {
                            i += 2;
                        } else {
                            i += 1;
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                let start = if escapes { start - 1 } else { start };
                out.push(Token {
                    tok: Tok::Str,
                    start,
                    end: i.min(b.len()),
                });
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() {
                    if b[i] == b'"' {
                        if b.get(i + 1) == Some(&b'"') {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    i += 1;
                }
                Tok::Quoted
            }
            b'$' => {
                let mut j = i + 1;
                while j < b.len() && ident_byte(b[j]) && b[j] != b'$' {
                    j += 1;
                }
                if j < b.len() && b[j] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    let tag = &b[i..=j];
                    let body = j + 1;
                    i = memchr::memmem::find(&b[body..], tag)
                        .map_or(b.len(), |k| body + k + tag.len());
                    Tok::Str
                } else {
                    i = j.max(i + 1);
                    Tok::Punct(b'$')
                }
            }
            _ if c.is_ascii_digit() => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
                Tok::Number
            }
            _ if ident_byte(c) => {
                while i < b.len() && ident_byte(b[i]) {
                    i += 1;
                }
                Tok::Word
            }
            _ => {
                i += 1;
                Tok::Punct(c)
            }
        };
        out.push(Token {
            tok,
            start,
            end: i.min(b.len()),
        });
    }
    out
}

/// A possibly qualified name starting at token `at`: its text and the index
/// of the token after it.
pub fn qualified_name(sql: &str, toks: &[Token], at: usize) -> Option<(String, usize)> {
    let first = toks.get(at).filter(|t| t.is_name())?;
    let mut end = at + 1;
    while toks.get(end).is_some_and(|t| t.tok == Tok::Punct(b'.'))
        && toks.get(end + 1).is_some_and(Token::is_name)
    {
        end += 2;
    }
    Some((sql[first.start..toks[end - 1].end].to_owned(), end))
}

/// Classifies one statement by its leading tokens.
pub fn classify(sql: &str) -> Kind {
    let t = tokens(sql);
    let word = |i: usize, kw: &str| t.get(i).is_some_and(|x| x.is(sql, kw));
    if word(0, "set") {
        if let Some(name) = t.get(1).filter(|x| x.tok == Tok::Word) {
            let name = name.text(sql).to_ascii_lowercase();
            if name != "session" && name != "role" && name != "local" {
                return Kind::Set { name };
            }
        }
        return Kind::Other;
    }
    if word(0, "begin") || word(0, "commit") {
        return Kind::LargeObjectData;
    }
    if word(0, "select") && t.len() > 4 && word(1, "pg_catalog") {
        let func = t[3].text(sql).to_ascii_lowercase();
        return match func.as_str() {
            "setval" => Kind::SequenceSet,
            "lo_open" | "lowrite" | "lo_close" => Kind::LargeObjectData,
            "set_config" => match t.get(5) {
                Some(arg) if arg.tok == Tok::Str => Kind::Set {
                    name: arg.text(sql).trim_matches('\'').to_ascii_lowercase(),
                },
                _ => Kind::Other,
            },
            _ => Kind::Other,
        };
    }
    if word(0, "copy") {
        if let Some((table, next)) = qualified_name(sql, &t, 1) {
            let from = t[next..].iter().position(|x| x.is(sql, "from"));
            if from.is_some_and(|f| t.get(next + f + 1).is_some_and(|x| x.is(sql, "stdin"))) {
                return Kind::Copy { table };
            }
        }
        return Kind::Other;
    }
    if word(0, "comment") && word(1, "on") {
        return Kind::Comment;
    }
    if word(0, "create") {
        let mut i = 1;
        if word(i, "unique") {
            i += 1;
        }
        if word(i, "index") {
            let on = t.iter().skip(i).position(|x| x.is(sql, "on"));
            if let Some(on) = on {
                let mut at = i + on + 1;
                if word(at, "only") {
                    at += 1;
                }
                if let Some((table, _)) = qualified_name(sql, &t, at) {
                    return Kind::Index { table };
                }
            }
        }
        return Kind::Other;
    }
    if word(0, "alter") && word(1, "table") {
        let mut at = 2;
        if word(at, "only") {
            at += 1;
        }
        let Some((table, next)) = qualified_name(sql, &t, at) else {
            return Kind::Other;
        };
        if !(word(next, "add") && word(next + 1, "constraint")) {
            return Kind::Other;
        }
        let what = next + 3;
        if word(what, "foreign") && word(what + 1, "key") {
            let refs = t.iter().skip(what).position(|x| x.is(sql, "references"));
            if let Some((references, _)) = refs.and_then(|r| qualified_name(sql, &t, what + r + 1))
            {
                return Kind::ForeignKey { table, references };
            }
            return Kind::Other;
        }
        if (word(what, "primary") && word(what + 1, "key"))
            || word(what, "unique")
            || word(what, "exclude")
            || word(what, "check")
        {
            return Kind::Constraint { table };
        }
    }
    Kind::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_pieces(script: &[u8], step: usize) -> Result<Vec<Event>, ScriptError> {
        let mut p = ScriptParser::default();
        let mut out = Vec::new();
        for piece in script.chunks(step) {
            p.feed(Bytes::copy_from_slice(piece), &mut out)?;
        }
        p.finish(&mut out)?;
        // Batches may be split differently; join adjacent data for comparison.
        let mut joined: Vec<Event> = Vec::new();
        for e in out {
            match (joined.last_mut(), e) {
                (Some(Event::CopyData(prev)), Event::CopyData(more)) => prev.extend(more),
                (_, e) => joined.push(e),
            }
        }
        for e in &mut joined {
            if let Event::CopyData(parts) = e {
                let all: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
                *parts = vec![Bytes::from(all)];
            }
        }
        Ok(joined)
    }

    const SCRIPT: &str = "--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\n\
SET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);\n\n\
--\n-- Name: f; Type: FUNCTION; Schema: public; Owner: app\n--\n\n\
CREATE FUNCTION public.f() RETURNS text\n    LANGUAGE sql\n    AS $_$SELECT 'a;b' || $1 || $q$;$q$ -- ;\n$_$;\n\n\
CREATE TABLE \"Odd;\"\"Name\" (x text DEFAULT E'it\\'s;' /* ; /* nested ; */ */);\n\n\
COPY \"Odd;\"\"Name\" (x) FROM stdin;\nrow;1\n\\\\.\n-- not a comment\n\\.\n\n\
COPY public.empty (a) FROM stdin;\n\\.\n\n\
SELECT pg_catalog.setval('public.s', 42, true);\n\n\
ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n\
CREATE UNIQUE INDEX i ON ONLY public.t USING btree (v);\n\
ALTER TABLE ONLY public.u\n    ADD CONSTRAINT u_fk FOREIGN KEY (t) REFERENCES public.t(id);\n\
COMMENT ON INDEX public.i IS 'x';\n\n\\unrestrict abc123\n";

    fn statements(events: &[Event]) -> Vec<(String, Kind)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Statement(s) => Some((s.sql.clone(), s.kind.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn statements_end_at_real_semicolons_in_any_split() {
        let whole = parse_in_pieces(SCRIPT.as_bytes(), SCRIPT.len()).unwrap();
        for step in [1, 2, 3, 7, 13, 64] {
            assert_eq!(
                parse_in_pieces(SCRIPT.as_bytes(), step).unwrap(),
                whole,
                "pieces of {step} bytes"
            );
        }
        let s = statements(&whole);
        let sqls: Vec<&str> = s.iter().map(|(q, _)| q.as_str()).collect();
        assert_eq!(sqls[0], "SET statement_timeout = 0;");
        assert!(
            sqls[2].starts_with("CREATE FUNCTION") && sqls[2].ends_with("$_$;"),
            "{}",
            sqls[2]
        );
        assert!(sqls[3].ends_with("*/);"), "{}", sqls[3]);
        assert_eq!(s.len(), 11, "{sqls:#?}");
        assert_eq!(
            s.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>(),
            vec![
                Kind::Set {
                    name: "statement_timeout".into()
                },
                Kind::Set {
                    name: "search_path".into()
                },
                Kind::Other,
                Kind::Other,
                Kind::Copy {
                    table: "\"Odd;\"\"Name\"".into()
                },
                Kind::Copy {
                    table: "public.empty".into()
                },
                Kind::SequenceSet,
                Kind::Constraint {
                    table: "public.t".into()
                },
                Kind::Index {
                    table: "public.t".into()
                },
                Kind::ForeignKey {
                    table: "public.u".into(),
                    references: "public.t".into()
                },
                Kind::Comment,
            ]
        );
        let data: Vec<&Event> = whole
            .iter()
            .filter(|e| matches!(e, Event::CopyData(_) | Event::CopyEnd))
            .collect();
        assert_eq!(
            data[0],
            &Event::CopyData(vec![Bytes::from_static(
                b"row;1\n\\\\.\n-- not a comment\n"
            )])
        );
        assert_eq!(data[1], &Event::CopyEnd);
        assert_eq!(data[2], &Event::CopyEnd, "an empty table has no data batch");
    }

    #[test]
    fn other_meta_commands_are_refused() {
        let err = parse_in_pieces(b"SET a = 1;\n\\! rm -rf /\n", 5).unwrap_err();
        assert_eq!(err, ScriptError::MetaCommand("\\! rm -rf /".into()));
        // A backslash inside a statement or data is not a meta-command.
        parse_in_pieces(b"SELECT 1\n\\\\;\n", 3).unwrap();
    }

    #[test]
    fn truncation_is_an_error() {
        assert_eq!(
            parse_in_pieces(b"COPY public.t (a) FROM stdin;\n1\n2\n", 4).unwrap_err(),
            ScriptError::EndsInCopy("public.t".into())
        );
        assert!(matches!(
            parse_in_pieces(b"CREATE TABLE t (a int", 4).unwrap_err(),
            ScriptError::EndsInStatement(_)
        ));
        // A terminator without its final newline still ends the data.
        let e = parse_in_pieces(b"COPY public.t (a) FROM stdin;\n1\n\\.", 2).unwrap();
        assert_eq!(e.last(), Some(&Event::CopyEnd));
    }

    #[test]
    fn large_tables_come_in_batches_of_whole_lines() {
        let mut script = b"COPY public.big (a) FROM stdin;\n".to_vec();
        let line = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
        let lines = COPY_BATCH * 3 / line.len();
        for _ in 0..lines {
            script.extend_from_slice(line);
        }
        script.extend_from_slice(b"\\.\n");
        let mut p = ScriptParser::default();
        let mut out = Vec::new();
        for piece in script.chunks(1 << 20) {
            p.feed(Bytes::copy_from_slice(piece), &mut out).unwrap();
        }
        p.finish(&mut out).unwrap();
        let batches: Vec<usize> = out
            .iter()
            .filter_map(|e| match e {
                Event::CopyData(parts) => Some(parts.iter().map(Bytes::len).sum()),
                _ => None,
            })
            .collect();
        assert!(batches.len() >= 3, "{batches:?}");
        assert!(
            batches.iter().all(|n| n % line.len() == 0),
            "whole lines only"
        );
        assert_eq!(batches.iter().sum::<usize>(), lines * line.len());
    }

    #[test]
    fn classification_reads_names_not_comments() {
        assert_eq!(
            classify("CREATE INDEX \"x ON y\" ON \"My\".\"T\" USING btree (a);"),
            Kind::Index {
                table: "\"My\".\"T\"".into()
            }
        );
        assert_eq!(
            classify("ALTER TABLE ONLY public.t ADD CONSTRAINT c CHECK ((a > 0)) NOT VALID;"),
            Kind::Constraint {
                table: "public.t".into()
            }
        );
        assert_eq!(
            classify("ALTER TABLE ONLY public.t ALTER COLUMN id SET DEFAULT nextval('s');"),
            Kind::Other
        );
        assert_eq!(classify("SET SESSION AUTHORIZATION 'x';"), Kind::Other);
        assert_eq!(
            classify("SELECT pg_catalog.lo_open('16397', 131072);"),
            Kind::LargeObjectData
        );
        assert_eq!(
            classify("SELECT pg_catalog.lo_create('16397');"),
            Kind::Other
        );
        let t = tokens("GRANT SELECT ON TABLE public.t TO \"Read Only\" /* c */, app;");
        let words: Vec<&str> = t
            .iter()
            .map(|x| x.text("GRANT SELECT ON TABLE public.t TO \"Read Only\" /* c */, app;"))
            .collect();
        assert_eq!(
            words,
            [
                "GRANT",
                "SELECT",
                "ON",
                "TABLE",
                "public",
                ".",
                "t",
                "TO",
                "\"Read Only\"",
                ",",
                "app",
                ";"
            ]
        );
        let e = tokens("SELECT E'a\\'b', 'c''d', $x$ $y$ $x$, $1;");
        assert_eq!(
            e.iter().map(|t| t.tok).collect::<Vec<_>>(),
            [
                Tok::Word,
                Tok::Str,
                Tok::Punct(b','),
                Tok::Str,
                Tok::Punct(b','),
                Tok::Str,
                Tok::Punct(b','),
                Tok::Punct(b'$'),
                Tok::Punct(b';')
            ]
        );
    }
}
