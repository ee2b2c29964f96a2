-- +goose Up
-- Text is UTF-8 (utf8mb4: every code point, emoji included) whatever the
-- server's or the database's default character set (often latin1), and
-- compares byte for byte. Migration 1 created the tables with the default.
ALTER TABLE skus CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE orders CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;

-- +goose Down
-- Nothing to undo: utf8mb4 holds whatever the old character set held.
SELECT 1;
