-- One server in the compose stack holds both the simulated OLTP source and the warehouse.
CREATE DATABASE warehouse;
CREATE DATABASE source;
