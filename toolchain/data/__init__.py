"""SQuAD reading, scoring and the splits the stages draw questions from (calibration, search); imports only core."""
