"""The process runtime of ``marketflow up``: embedded services, Spark servers, supervision."""
