-- +goose Up
-- Times are Unix milliseconds (UTC): the same in MySQL/MariaDB and SQLite,
-- and deadlines compare as plain integers.
CREATE TABLE skus (
    sku            BIGINT       NOT NULL PRIMARY KEY,
    name           VARCHAR(200) NOT NULL,
    price_cents    BIGINT       NOT NULL,
    available      BIGINT       NOT NULL,
    limit_per_user BIGINT       NOT NULL DEFAULT 0,
    CONSTRAINT skus_available_not_negative CHECK (available >= 0)
) ENGINE=InnoDB;

CREATE TABLE orders (
    id               BIGINT      NOT NULL AUTO_INCREMENT PRIMARY KEY,
    user_id          BIGINT      NOT NULL,
    sku              BIGINT      NOT NULL,
    qty              BIGINT      NOT NULL,
    amount_cents     BIGINT      NOT NULL,
    status           VARCHAR(16) NOT NULL,
    created_at       BIGINT      NOT NULL,
    pay_deadline     BIGINT      NOT NULL,
    paid_at          BIGINT      NULL,
    cancelled_at     BIGINT      NULL,
    shipped_at       BIGINT      NULL,
    confirm_deadline BIGINT      NULL,
    completed_at     BIGINT      NULL,
    auto_confirmed   BOOLEAN     NOT NULL DEFAULT FALSE,
    -- The deadline that the order's status waits for, if any: what the sweep
    -- looks for. One index serves both deadlines, so a transition updates one
    -- secondary index, not two.
    due_at           BIGINT AS (CASE status WHEN 'pending' THEN pay_deadline
                                            WHEN 'shipped' THEN confirm_deadline END) STORED,
    KEY orders_due (status, due_at),
    KEY orders_user (user_id, id),
    KEY orders_user_sku (user_id, sku)
) ENGINE=InnoDB;

-- +goose Down
DROP TABLE orders;
DROP TABLE skus;
