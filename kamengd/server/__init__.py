"""Running the web app: the gunicorn layout and the processes it supervises."""
