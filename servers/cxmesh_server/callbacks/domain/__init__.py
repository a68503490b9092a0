"""Pure rules of callbacks: office hours, capacity, states, wait estimates."""
