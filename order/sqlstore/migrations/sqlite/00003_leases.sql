-- +goose Up
-- Leases that live in the database, for work that must go on while Redis
-- cannot be reached: the listeners' periodic sweep takes the row 'sweep'
-- with one conditional UPDATE (holder = me, or expired). expires_at is in
-- Unix ms of the database's own clock.
CREATE TABLE orderd_leases (
    name       TEXT    NOT NULL PRIMARY KEY,
    holder     TEXT    NOT NULL,
    expires_at INTEGER NOT NULL
);
INSERT INTO orderd_leases (name, holder, expires_at) VALUES ('sweep', '', 0);

-- +goose Down
DROP TABLE orderd_leases;
