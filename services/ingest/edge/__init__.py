"""The network edge: the server and its shutdown, the path table (``routes``), one key check
(``auth``), admission, TLS and the web page."""
