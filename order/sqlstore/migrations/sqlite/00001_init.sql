-- +goose Up
-- Times are Unix milliseconds (UTC): the same in MySQL/MariaDB and SQLite,
-- and deadlines compare as plain integers.
CREATE TABLE skus (
    sku            INTEGER NOT NULL PRIMARY KEY,
    name           TEXT    NOT NULL,
    price_cents    INTEGER NOT NULL,
    available      INTEGER NOT NULL CHECK (available >= 0),
    limit_per_user INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE orders (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id          INTEGER NOT NULL,
    sku              INTEGER NOT NULL,
    qty              INTEGER NOT NULL,
    amount_cents     INTEGER NOT NULL,
    status           TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    pay_deadline     INTEGER NOT NULL,
    paid_at          INTEGER,
    cancelled_at     INTEGER,
    shipped_at       INTEGER,
    confirm_deadline INTEGER,
    completed_at     INTEGER,
    auto_confirmed   INTEGER NOT NULL DEFAULT 0,
    -- The deadline that the order's status waits for, if any: what the sweep
    -- looks for. One index serves both deadlines.
    due_at           INTEGER GENERATED ALWAYS AS (CASE status WHEN 'pending' THEN pay_deadline
                                                             WHEN 'shipped' THEN confirm_deadline END) STORED
);
CREATE INDEX orders_due ON orders (status, due_at);
CREATE INDEX orders_user ON orders (user_id, id);
CREATE INDEX orders_user_sku ON orders (user_id, sku);

-- +goose Down
DROP TABLE orders;
DROP TABLE skus;
