"""Self-hostable secure-tunnel relay for IoT fleets (Huawei IoTDA v5 tunnel API compatible)."""
