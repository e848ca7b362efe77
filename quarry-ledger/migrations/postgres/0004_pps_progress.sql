-- How far PPS has credited the share log. One row; a pass claims a range of shares by moving
-- last_share_id from the value it read, so two frontends never credit the same shares.
CREATE TABLE pps_progress (
    id BIGINT PRIMARY KEY,
    last_share_id BIGINT NOT NULL
);
INSERT INTO pps_progress (id, last_share_id) VALUES (1, 0);
