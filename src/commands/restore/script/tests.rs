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
