-- +goose Up
-- The outbox of the transitions stream: every transition of an order is
-- recorded here in the transaction that makes it, and relayed to the Redis
-- stream <prefix>orderd:transitions afterwards, then deleted. A transition is
-- never lost between the commit and the stream: what is not relayed yet is
-- still here. seq orders the records, so the transitions of one order.
--
-- One record holds the transitions that one statement made together (a
-- batch of expiries: up to 1,000 orders moved from one status to another at
-- one moment), so that a burst costs the database one row per batch, not one
-- per order: changes lists them as "order_id:user_id:sku:qty", comma-separated.
CREATE TABLE transitions_outbox (
    seq         BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    from_status VARCHAR(16) NOT NULL,
    to_status   VARCHAR(16) NOT NULL,
    changed_at  BIGINT      NOT NULL,
    source      VARCHAR(16) NOT NULL,
    n           INT         NOT NULL,
    changes     MEDIUMTEXT  NOT NULL
) ENGINE=InnoDB CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- +goose Down
DROP TABLE transitions_outbox;
