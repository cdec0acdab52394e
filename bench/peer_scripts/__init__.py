"""Scripts each peer engine runs in its own interpreter (bench/.peers/*): they import only that engine, read
the token ids bench/peers.py wrote, and print one JSON line."""
