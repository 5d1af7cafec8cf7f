"""Helpers the test modules share: images, daemons, fakes, throwaway servers."""
