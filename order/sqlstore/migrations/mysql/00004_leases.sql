-- +goose Up
-- Leases that live in the database, for work that must go on while Redis
-- cannot be reached: the listeners' periodic sweep takes the row 'sweep'
-- with one conditional UPDATE (holder = me, or expired), which certification
-- also serialises on Galera. expires_at is in Unix ms of the database's own
-- clock, so the hosts' clocks do not matter.
CREATE TABLE orderd_leases (
    name       VARCHAR(64)  NOT NULL PRIMARY KEY,
    holder     VARCHAR(255) NOT NULL,
    expires_at BIGINT       NOT NULL
) ENGINE=InnoDB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
INSERT INTO orderd_leases (name, holder, expires_at) VALUES ('sweep', '', 0);

-- +goose Down
DROP TABLE orderd_leases;
