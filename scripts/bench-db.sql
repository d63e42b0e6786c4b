-- A database shaped like the strategy's production one (10.8M rows):
-- 500 events, 1.8M participants, 9M results; about a 826 MB plain dump.
-- Usage: createdb bench && psql -q -d bench -f scripts/bench-db.sql
-- Optional: psql -v scale=10 ... for a ten times larger results table.
\if :{?scale}
\else
\set scale 1
\endif
DROP TABLE IF EXISTS results, participants, events;
CREATE TABLE events (
  id int PRIMARY KEY, name text NOT NULL, starts_at timestamptz NOT NULL, location text);
CREATE TABLE participants (
  id bigint PRIMARY KEY, event_id int REFERENCES events(id), first_name text, last_name text,
  email text, bib int, age int, gender char(1), city text, registered_at timestamptz);
CREATE TABLE results (
  id bigint PRIMARY KEY, participant_id bigint REFERENCES participants(id), split_name text,
  elapsed interval, recorded_at timestamptz, chip_id text);
INSERT INTO events
  SELECT g, 'Race ' || g || ' ' || (ARRAY['Marathon','Half','10K','5K','Ultra'])[1 + g % 5],
         now() - (g || ' days')::interval,
         (ARRAY['Boston','Denver','Austin','Portland','Miami','Chicago'])[1 + g % 6]
  FROM generate_series(1, 500) g;
INSERT INTO participants
  SELECT g, 1 + g % 500,
         (ARRAY['Ann','Bob','Carla','Dev','Eli','Fay','Gus','Hana','Ivan','Jo'])[1 + g % 10] || substr(md5(g::text), 1, 3),
         (ARRAY['Smith','Lee','Garcia','Kim','Nguyen','Brown','Ito','Novak'])[1 + (g / 7) % 8],
         'runner' || g || '@example.' || (ARRAY['com','org','net'])[1 + g % 3],
         g % 30000, 18 + g % 60, (ARRAY['F','M','X'])[1 + g % 3],
         (ARRAY['Boston','Denver','Austin','Portland','Miami','Chicago','Seattle'])[1 + (g / 3) % 7],
         now() - ((g % 900) || ' hours')::interval
  FROM generate_series(1, 1800000) g;
INSERT INTO results
  SELECT g, 1 + g % 1800000, (ARRAY['start','5k','10k','half','finish'])[1 + g % 5],
         ((g % 20000) || ' seconds')::interval, now() - ((g % 5000) || ' minutes')::interval,
         upper(substr(md5((g / 5)::text), 1, 12))
  FROM generate_series(1, 9000000 * :scale) g;
ANALYZE;
