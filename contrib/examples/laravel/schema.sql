-- The tables of a Laravel shop, as it already has them (orderd creates
-- nothing): an order's status is 0 unpaid, 1 paid, 2 shipped, 3 received,
-- 4 closed; its lines are in order_goods; stock is in goods.
CREATE TABLE goods (
  id    BIGINT UNSIGNED PRIMARY KEY,
  name  VARCHAR(100) NOT NULL,
  stock INT NOT NULL
);
CREATE TABLE orders (
  id               BIGINT UNSIGNED PRIMARY KEY,
  user_id          BIGINT UNSIGNED NOT NULL,
  status           TINYINT NOT NULL DEFAULT 0,
  pay_deadline     DATETIME(3) NOT NULL,
  confirm_deadline DATETIME(3) NULL,
  closed_at        DATETIME(3) NULL,
  received_at      DATETIME(3) NULL,
  KEY orders_pay_due (status, pay_deadline),
  KEY orders_confirm_due (status, confirm_deadline)
);
CREATE TABLE order_goods (
  id       BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  order_id BIGINT UNSIGNED NOT NULL,
  goods_id BIGINT UNSIGNED NOT NULL,
  num      INT NOT NULL,
  KEY order_goods_order (order_id)
);
