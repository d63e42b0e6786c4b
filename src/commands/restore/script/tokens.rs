//! Tokens of one SQL statement (identifiers, strings, punctuation) and what a
//! statement is, read from its tokens.

use super::*;

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
// Long on purpose: One lexer loop; each arm is one token kind.
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
// Long on purpose: One table of statement kinds, read top to bottom.
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
