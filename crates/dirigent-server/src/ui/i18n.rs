//! The panel's languages: English (the words in the templates) and Russian (this table), chosen
//! by the user's saved preference, else by the browser's `Accept-Language`.

/// A language the panel speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ru,
}

impl Lang {
    /// Every language, in the order the switcher lists them.
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Ru];

    /// The language saved as `code` (`en`, `ru`), if the panel speaks it.
    pub fn from_code(code: &str) -> Option<Lang> {
        match code {
            "en" => Some(Lang::En),
            "ru" => Some(Lang::Ru),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ru => "ru",
        }
    }

    /// The language's own name, for the switcher.
    pub fn name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Ru => "Русский",
        }
    }

    /// The first language of an `Accept-Language` header the panel speaks (by quality, then
    /// order); English when none.
    pub fn from_accept_language(header: &str) -> Lang {
        let mut best: Option<(f32, Lang)> = None;
        for entry in header.split(',') {
            let mut parts = entry.trim().split(';');
            let tag = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let quality = parts
                .find_map(|param| param.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or_default();
            if let Some(lang) = Lang::from_code(primary)
                && best.is_none_or(|(q, _)| q < quality)
            {
                best = Some((quality, lang));
            }
        }
        best.map_or(Lang::En, |(_, lang)| lang)
    }

    /// `english` in this language.
    pub fn t(self, english: &str) -> &str {
        match self {
            Lang::En => ENGLISH
                .iter()
                .find(|(key, _)| *key == english)
                .map_or(english, |(_, words)| words),
            Lang::Ru => RUSSIAN
                .iter()
                .find(|(en, _)| *en == english)
                .map_or(english, |(_, ru)| ru),
        }
    }
}

/// State names of the API that read better as words.
const ENGLISH: &[(&str, &str)] = &[
    ("in_progress", "in progress"),
    ("timed_out", "timed out"),
    ("in_use", "in use"),
];

/// Every English phrase of the panel and its Russian; `tests` checks that each phrase the
/// templates and pages use is here.
const RUSSIAN: &[(&str, &str)] = &[
    ("Dashboard", "Обзор"),
    ("Console", "Консоль"),
    ("About", "О чём"),
    ("Operation", "Операция"),
    ("Arguments", "Аргументы"),
    ("sequential", "по очереди"),
    ("parallel", "параллельно"),
    ("Timeout, seconds", "Тайм-аут, секунд"),
    ("Activity", "Действие"),
    ("Result", "Результат"),
    ("Asked by", "Кто запросил"),
    ("Repeat", "Повторить"),
    ("Part of", "Часть действия"),
    ("Children", "Дочерние"),
    ("Cancel", "Отменить"),
    ("cancelled", "отменено"),
    ("Processes", "Процессы"),
    ("Info", "Сведения"),
    ("Files", "Файлы"),
    ("New binary", "Новый исполняемый файл"),
    ("Update", "Обновить"),
    ("Robots", "Роботы"),
    ("Robot", "Робот"),
    ("Runs", "Запуски"),
    ("Run", "Запуск"),
    ("Agents", "Агенты"),
    ("Sessions", "Сеансы"),
    ("Session", "Сеанс"),
    ("History", "История"),
    (
        "No agent offers graphical sessions.",
        "Ни один агент не предлагает графических сеансов.",
    ),
    ("agent offline", "агент не в сети"),
    ("Screen of", "Экран сеанса"),
    ("Screen", "Экран"),
    ("Controlled by", "Управляет"),
    ("Take over", "Взять управление"),
    ("Give back", "Вернуть управление"),
    (
        "Your clicks and keys go to this session.",
        "Ваши щелчки и нажатия клавиш идут в этот сеанс.",
    ),
    ("The screen it ended on", "Экран в момент завершения"),
    ("The latest frame", "Последний кадр"),
    ("ready", "готов"),
    ("in_use", "занят"),
    ("restarting", "перезапускается"),
    ("Agent", "Агент"),
    ("Triggers", "Триггеры"),
    ("Queues", "Очереди"),
    ("Users", "Пользователи"),
    ("Audit log", "Журнал аудита"),
    ("Log in", "Войти"),
    ("Log out", "Выйти"),
    ("Username", "Имя пользователя"),
    ("Password", "Пароль"),
    ("Language", "Язык"),
    ("Main navigation", "Главное меню"),
    ("Skip to content", "К содержимому"),
    ("Signed in as", "Вы вошли как"),
    ("Agents online", "Агентов в сети"),
    ("Runs now", "Запусков сейчас"),
    ("Failed in the last 24 hours", "Сбоев за 24 часа"),
    ("Robots by state", "Роботы по состоянию"),
    ("Active runs", "Активные запуски"),
    ("Recent failures", "Последние сбои"),
    ("Nothing here yet.", "Пока ничего нет."),
    ("Name", "Имя"),
    ("Description", "Описание"),
    ("Command", "Команда"),
    ("Working directory", "Рабочий каталог"),
    ("Environment", "Окружение"),
    ("Max parallel runs", "Параллельных запусков, не более"),
    ("Restart policy", "Политика перезапуска"),
    ("Mode", "Режим"),
    ("auto", "авто"),
    ("manual", "ручной"),
    ("State", "Состояние"),
    ("Reason", "Причина"),
    ("Started", "Запущен"),
    ("Ended", "Завершён"),
    ("Created", "Создан"),
    ("Exit code", "Код выхода"),
    ("Start", "Запустить"),
    ("Pause", "Пауза"),
    ("Resume", "Продолжить"),
    ("Safe stop", "Мягкая остановка"),
    ("Force stop", "Принудительная остановка"),
    ("Restart", "Перезапустить"),
    ("Back to auto", "Вернуть в авто"),
    ("Delete", "Удалить"),
    ("Create robot", "Создать робота"),
    ("New robot", "Новый робот"),
    ("One argument per line", "Один аргумент на строку"),
    ("Run history", "История запусков"),
    ("Definition", "Определение"),
    ("Timeline", "Хронология"),
    ("Output", "Вывод"),
    ("Cause", "Инициатор"),
    ("Time", "Время"),
    ("Host", "Хост"),
    ("Labels", "Метки"),
    ("Capacity", "Ёмкость"),
    ("Current runs", "Текущие запуски"),
    ("Last seen", "Был в сети"),
    ("Version", "Версия"),
    ("Drain", "Вывести из работы"),
    ("Undrain", "Вернуть в работу"),
    ("online", "в сети"),
    ("offline", "не в сети"),
    ("draining", "выводится"),
    ("queued", "в очереди"),
    ("starting", "запускается"),
    ("running", "работает"),
    ("paused", "на паузе"),
    ("stopping", "останавливается"),
    ("succeeded", "успешно"),
    ("failed", "сбой"),
    ("stopped", "остановлен"),
    ("killed", "прерван"),
    ("timed_out", "превышено время"),
    ("lost", "потерян"),
    ("idle", "простаивает"),
    ("Kind", "Тип"),
    ("Next fire", "Следующий запуск"),
    ("Enabled", "Включён"),
    ("Enable", "Включить"),
    ("Disable", "Выключить"),
    ("yes", "да"),
    ("no", "нет"),
    ("Items", "Элементы"),
    ("Oldest new item", "Самый старый новый элемент"),
    ("Roles", "Роли"),
    ("Disabled", "Отключён"),
    ("Actor", "Кто"),
    ("Action", "Действие"),
    ("Target", "Объект"),
    ("Status", "Статус"),
    ("Not found", "Не найдено"),
    ("Not allowed", "Нет доступа"),
    ("Something went wrong", "Что-то пошло не так"),
    ("Live", "В реальном времени"),
    ("Reconnecting…", "Переподключение…"),
    ("Are you sure?", "Вы уверены?"),
    ("Could not reach the server.", "Сервер недоступен."),
    (
        "Streams the output as the robot writes it.",
        "Вывод появляется по мере работы робота.",
    ),
    ("No output yet.", "Вывода пока нет."),
    ("Show all", "Показать все"),
    ("Page not found.", "Страница не найдена."),
    (
        "You may not see this page.",
        "У вас нет доступа к этой странице.",
    ),
    ("Trigger", "Триггер"),
    ("Schedule", "Расписание"),
    ("dry run", "пробный"),
    ("New trigger", "Новый триггер"),
    ("Every, seconds", "Каждые, секунд"),
    ("At", "В"),
    ("Days", "Дни"),
    ("Times", "Время запуска"),
    ("Window opens", "Окно открывается"),
    ("Window closes", "Окно закрывается"),
    ("Queue", "Очередь"),
    ("Time zone", "Часовой пояс"),
    (
        "Dry run: record firings, start nothing",
        "Пробный режим: записывать срабатывания, ничего не запускать",
    ),
    ("Create trigger", "Создать триггер"),
    ("Failed runs in a row", "Сбоев подряд"),
    ("Next fire times", "Ближайшие запуски"),
    ("Local time", "Местное время"),
    ("Offset", "Смещение"),
    ("Firings", "Срабатывания"),
    ("Due", "Срок"),
    ("Outcome", "Итог"),
    ("new", "новый"),
    ("in_progress", "в работе"),
    ("successful", "успешно"),
    ("abandoned", "брошен"),
    ("deleted", "удалён"),
    ("Successful in the last hour", "Успешно за последний час"),
    ("Max attempts", "Попыток, не более"),
    ("Lease, seconds", "Аренда, секунд"),
    ("Unique references", "Уникальные ссылки"),
    ("Reference", "Ссылка"),
    ("Filter", "Отобрать"),
    ("Priority", "Приоритет"),
    ("Attempts", "Попытки"),
    ("Error", "Ошибка"),
    ("Payload", "Данные"),
    ("Requeue these", "Вернуть эти в очередь"),
    ("Delete these", "Удалить эти"),
    ("Permissions", "Права"),
    ("Older", "Раньше"),
    ("Calendars", "Календари"),
    ("Working days", "Рабочие дни"),
    ("Excluded dates", "Исключённые даты"),
    ("Edit", "Изменить"),
    ("one per line", "по одной на строку"),
    ("Import CSV or iCalendar", "Импорт из CSV или iCalendar"),
    ("Save", "Сохранить"),
    ("New calendar", "Новый календарь"),
    ("Create calendar", "Создать календарь"),
    ("New user", "Новый пользователь"),
    ("Create user", "Создать пользователя"),
    ("Edit definition", "Изменить определение"),
    ("Start with arguments", "Запустить с аргументами"),
    ("Needs a display", "Нужен экран"),
    ("Started by", "Кто запустил"),
    ("Duration", "Длительность"),
    ("Arguments, one per line", "Аргументы, по одному в строке"),
    (
        "Environment, one KEY=VALUE per line",
        "Окружение, по одному КЛЮЧ=ЗНАЧЕНИЕ в строке",
    ),
    ("Definition, JSON", "Определение, JSON"),
    ("New password", "Новый пароль"),
    ("New role", "Новая роль"),
    ("Create role", "Создать роль"),
    ("Next page", "Следующая страница"),
    ("Logs", "Журналы"),
    ("Search", "Найти"),
    ("Source", "Источник"),
    ("Level", "Уровень"),
    ("Where", "Откуда"),
    ("Text", "Текст"),
    ("Follow live", "Следить вживую"),
    ("Stop following", "Перестать следить"),
    ("Within run", "В запуске"),
    ("Nothing found.", "Ничего не найдено."),
    ("Search the output", "Искать в выводе"),
    ("robot", "робот"),
    ("agent", "агент"),
    ("server", "сервер"),
    ("activity", "действие"),
    ("debug", "отладка"),
    ("info", "сведения"),
    ("warn", "предупреждение"),
    ("error", "ошибка"),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_browsers_preferred_language_wins() {
        assert_eq!(
            Lang::from_accept_language("ru-RU,ru;q=0.9,en;q=0.8"),
            Lang::Ru
        );
        assert_eq!(Lang::from_accept_language("en-US,ru;q=0.5"), Lang::En);
        assert_eq!(Lang::from_accept_language("de-DE, ru;q=0.3"), Lang::Ru);
        assert_eq!(Lang::from_accept_language("de, fr;q=0.5"), Lang::En);
        assert_eq!(Lang::from_accept_language(""), Lang::En);
        assert_eq!(Lang::from_accept_language("en;q=0.2, ru;q=0.7"), Lang::Ru);
    }

    #[test]
    fn every_phrase_the_panel_uses_has_its_russian() {
        let templates = concat!(
            include_str!("../../templates/base.html"),
            include_str!("../../templates/buttons.html"),
            include_str!("../../templates/login.html"),
            include_str!("../../templates/dashboard.html"),
            include_str!("../../templates/robots.html"),
            include_str!("../../templates/robot.html"),
            include_str!("../../templates/run.html"),
            include_str!("../../templates/agents.html"),
            include_str!("../../templates/sessions.html"),
            include_str!("../../templates/session.html"),
            include_str!("../../templates/session_card.html"),
            include_str!("../../templates/triggers.html"),
            include_str!("../../templates/trigger.html"),
            include_str!("../../templates/calendars.html"),
            include_str!("../../templates/queues.html"),
            include_str!("../../templates/queue.html"),
            include_str!("../../templates/users.html"),
            include_str!("../../templates/audit.html"),
            include_str!("../../templates/message.html"),
            include_str!("../../templates/console.html"),
            include_str!("../../templates/activity.html"),
            include_str!("../../templates/logs.html"),
            include_str!("../../templates/log_place.html"),
        );
        // Labels chosen in Rust (buttons, navigation, error titles): every capitalized
        // string literal outside comments.
        let code = concat!(
            include_str!("mod.rs"),
            include_str!("dashboard.rs"),
            include_str!("robots.rs"),
            include_str!("agents.rs"),
            include_str!("sessions.rs"),
            include_str!("triggers.rs"),
            include_str!("queues.rs"),
            include_str!("admin.rs"),
            include_str!("console.rs"),
            include_str!("logs.rs"),
        );
        let mut phrases: Vec<&str> = templates
            .match_indices(".t(\"")
            .map(|(n, _)| {
                let rest = &templates[n + 4..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect();
        for line in code
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
        {
            for literal in line.split('"').skip(1).step_by(2) {
                let mut chars = literal.chars();
                let capitalized = chars.next().is_some_and(char::is_uppercase)
                    && chars.next().is_some_and(char::is_lowercase);
                if capitalized && !literal.contains(['{', '/', '<', ':']) {
                    phrases.push(literal);
                }
            }
        }
        for expected in ["Safe stop", "Log in", "Requeue these", "Audit log"] {
            assert!(phrases.contains(&expected), "{expected:?} not found");
        }
        let missing: Vec<&&str> = phrases
            .iter()
            .filter(|phrase| !RUSSIAN.iter().any(|(en, _)| en == *phrase))
            .collect();
        assert!(missing.is_empty(), "no Russian for {missing:?}");
        let mut seen = std::collections::HashSet::new();
        for (en, ru) in RUSSIAN {
            assert!(seen.insert(en), "{en:?} twice");
            assert_eq!(Lang::Ru.t(en), *ru);
        }
    }
}
