from delivery_service.app import build
from delivery_service.config import Settings
from mosaic.platform import server


def main() -> None:
    server.main(Settings.from_env, build)


if __name__ == "__main__":
    main()
