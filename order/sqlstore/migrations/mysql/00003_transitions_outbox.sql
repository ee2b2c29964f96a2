-- +goose Up
-- The outbox of the transitions stream: every transition of an order is
-- recorded here in the transaction that makes it, and relayed to the Redis
-- stream <prefix>orderd:transitions afterwards, then deleted. A transition is
-- never lost between the commit and the stream: what is not relayed yet is
-- still here. seq orders the transitions of one order.
CREATE TABLE transitions_outbox (
    seq         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    order_id    BIGINT      NOT NULL,
    user_id     BIGINT      NOT NULL,
    sku         BIGINT      NOT NULL,
    qty         BIGINT      NOT NULL,
    from_status VARCHAR(16) NOT NULL,
    to_status   VARCHAR(16) NOT NULL,
    changed_at  BIGINT      NOT NULL,
    source      VARCHAR(16) NOT NULL
) ENGINE=InnoDB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- +goose Down
DROP TABLE transitions_outbox;
