"""The built-in load-test `client` appliance: `client.py` (the program each client instance
runs, by path, stdlib only), `histogram.py` (the latency histogram it records into, also
stdlib only), and `report.py` (the controller's merge of the clients' results)."""
