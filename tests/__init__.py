"""markship's test suite: one folder per package of src/markship, faults/ for fault injection,
support/ for what the tests share."""
