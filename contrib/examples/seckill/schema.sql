-- The tables of a Spring flash-sale ("seckill") shop, of another shape than
-- the Laravel one: an order is a row of seckill_order keyed by its order
-- number (a string), its state a string, its deadline a Unix time in
-- milliseconds; the stock of each flash-sale goods is seckill_goods.stock_count.
CREATE TABLE seckill_goods (
  id          BIGINT PRIMARY KEY,
  stock_count INT NOT NULL
);
CREATE TABLE seckill_order (
  order_no  VARCHAR(32) PRIMARY KEY,
  user_id   BIGINT NOT NULL,
  goods_id  BIGINT NOT NULL,
  state     VARCHAR(16) NOT NULL DEFAULT 'WAIT_PAY',
  expire_at BIGINT NOT NULL,
  KEY seckill_order_due (state, expire_at)
);
