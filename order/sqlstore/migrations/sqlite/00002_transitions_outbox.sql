-- +goose Up
-- The outbox of the transitions stream: every transition of an order is
-- recorded here in the transaction that makes it, and relayed to the Redis
-- stream <prefix>orderd:transitions afterwards, then deleted. A transition is
-- never lost between the commit and the stream: what is not relayed yet is
-- still here. seq orders the transitions of one order.
CREATE TABLE transitions_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id    INTEGER NOT NULL,
    user_id     INTEGER NOT NULL,
    sku         INTEGER NOT NULL,
    qty         INTEGER NOT NULL,
    from_status TEXT    NOT NULL,
    to_status   TEXT    NOT NULL,
    changed_at  INTEGER NOT NULL,
    source      TEXT    NOT NULL
);

-- +goose Down
DROP TABLE transitions_outbox;
