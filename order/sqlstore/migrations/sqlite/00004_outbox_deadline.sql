-- +goose Up
-- An outbox record of a moved deadline (POST /v1/orders/{id}/deadline,
-- `orderd orders extend`) carries the new deadline, Unix ms; the records of
-- transitions carry none.
ALTER TABLE transitions_outbox ADD COLUMN deadline INTEGER NULL;

-- +goose Down
ALTER TABLE transitions_outbox DROP COLUMN deadline;
